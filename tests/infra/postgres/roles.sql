-- outbox-relay test roles, database and grants (test-only passwords, see
-- tests/infra/README.md). postgres.sh runs this with psql as the bootstrap
-- superuser on every up.sh run, so it is idempotent: CREATE what is missing,
-- then ALTER everything to the wanted state, and the roles cannot drift.
DO $$
DECLARE r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['outbox','relay','relay_md5','relay_plain','relay_trust'] LOOP
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
      EXECUTE format('CREATE ROLE %I', r);
    END IF;
  END LOOP;
END $$;
SET password_encryption = 'scram-sha-256';
ALTER ROLE outbox      SUPERUSER LOGIN PASSWORD 'outbox';
ALTER ROLE relay       NOSUPERUSER LOGIN REPLICATION CREATEDB PASSWORD 'relay-secret';
ALTER ROLE relay_plain NOSUPERUSER LOGIN REPLICATION PASSWORD 'plain-secret';
ALTER ROLE relay_trust NOSUPERUSER LOGIN REPLICATION PASSWORD NULL;
-- The md5 auth test needs an md5-hashed verifier, not a SCRAM one.
SET password_encryption = 'md5';
ALTER ROLE relay_md5   NOSUPERUSER LOGIN REPLICATION PASSWORD 'md5-secret';
RESET password_encryption;
SELECT 'CREATE DATABASE outbox OWNER outbox'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'outbox') \gexec
GRANT CONNECT, CREATE, TEMPORARY ON DATABASE outbox TO relay;
-- template1 grants are copied into every database the tests create, so
-- relay can create objects in public and read what outbox creates there.
\connect template1
GRANT USAGE, CREATE ON SCHEMA public TO relay;
ALTER DEFAULT PRIVILEGES FOR ROLE outbox IN SCHEMA public GRANT SELECT ON TABLES TO relay;
\connect outbox
GRANT USAGE, CREATE ON SCHEMA public TO relay;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO relay;
ALTER DEFAULT PRIVILEGES FOR ROLE outbox IN SCHEMA public GRANT SELECT ON TABLES TO relay;
