#!/usr/bin/env python3
"""A TLS and authentication gateway in front of the test registry (Apicurio's ccompat API), as production registries
are run: HTTPS with a certificate of a private CA, client certificates required, and basic auth or a bearer token.

Used by tests/schemas.rs (a_registry_behind_tls_and_auth_...): started per test on an ephemeral 127.0.0.1 port,
it prints "listening <port>" and serves until killed. Users: `writer` may do everything, `reader` gets 403 on any
write (POST/PUT/DELETE other than the read-only lookups); any other credentials get 401. Only 127.0.0.1.

usage: registry_gateway.py UPSTREAM_URL CERT KEY CA WRITER_PASSWORD READER_PASSWORD TOKEN
"""
import base64
import http.server
import ssl
import sys
import urllib.error
import urllib.request

upstream, cert, key, ca, writer_pw, reader_pw, token = sys.argv[1:8]
READ_ONLY_POSTS = ("/compatibility/",)  # a compatibility question changes nothing


class Gateway(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def role(self):
        auth = self.headers.get("Authorization", "")
        if auth == "Bearer " + token:
            return "writer"
        if auth.startswith("Basic "):
            try:
                user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
            except Exception:
                return None
            if (user, pw) == ("writer", writer_pw):
                return "writer"
            if (user, pw) == ("reader", reader_pw):
                return "reader"
        return None

    def reply(self, status, body, content_type="application/json"):
        data = body if isinstance(body, bytes) else body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="registry"')
        self.end_headers()
        self.wfile.write(data)

    def forward(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        role = self.role()
        if role is None:
            return self.reply(401, '{"error_code":401,"message":"Unauthorized"}')
        is_lookup = self.command == "POST" and self.path.startswith("/subjects/") and "/versions" not in self.path
        writes = self.command in ("POST", "PUT", "DELETE") and not is_lookup \
            and not any(self.path.startswith(p) for p in READ_ONLY_POSTS)
        if role == "reader" and writes:
            return self.reply(403, '{"error_code":403,"message":"Forbidden: user reader may not write"}')
        request = urllib.request.Request(upstream + self.path, data=body, method=self.command)
        for name in ("Content-Type", "Accept"):
            if self.headers.get(name):
                request.add_header(name, self.headers[name])
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                self.reply(response.status, response.read(), response.headers.get("Content-Type", "application/json"))
        except urllib.error.HTTPError as e:
            self.reply(e.code, e.read(), e.headers.get("Content-Type", "application/json"))

    do_GET = do_POST = do_PUT = do_DELETE = forward


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
context.load_verify_locations(ca)
context.verify_mode = ssl.CERT_REQUIRED
server.socket = context.wrap_socket(server.socket, server_side=True)
print("listening", server.server_address[1], flush=True)
server.serve_forever()
