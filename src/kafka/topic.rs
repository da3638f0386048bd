//! Kafka topic names: the broker's rules, in one place, for configured names, route templates and rendered topics.
//!
//! Invariant: a name this module accepts is one the broker accepts (`[a-zA-Z0-9._-]`, 1 to 249 characters, not
//! `.` or `..`); a template it accepts renders to such a name for every routing value made of those characters.

/// Placeholder in a topic template (`outbox.tables[].route_topic_replacement`) replaced by the routing column's
/// value.
pub const ROUTED_BY_VALUE: &str = "${routedByValue}";

/// Longest legal Kafka topic name.
pub const MAX_TOPIC_LEN: usize = 249;

/// Whether `b` may appear in a topic name.
#[inline]
pub fn is_topic_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-'
}

/// Checks a topic name: 1..=249 characters from `[a-zA-Z0-9._-]`, not `.` or `..`. Allocation-free: it runs for
/// every routed event.
pub fn check_name(topic: &str) -> Result<(), &'static str> {
    if topic.is_empty() {
        return Err("empty");
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err("longer than 249 characters");
    }
    if topic == "." || topic == ".." {
        return Err("\".\" and \"..\" are reserved");
    }
    if !topic.bytes().all(is_topic_byte) {
        return Err("only [a-zA-Z0-9._-] are allowed");
    }
    Ok(())
}

/// [`check_name`] with a message naming the topic, for configuration errors.
pub fn validate_name(topic: &str) -> Result<(), String> {
    check_name(topic).map_err(|reason| format!("`{topic}` is not a valid topic name: {reason}"))
}

/// Checks a route template (`outbox.event.${routedByValue}`): its literal parts follow the name rules, and a
/// template without the placeholder is a valid name itself.
pub fn validate_template(template: &str) -> Result<(), String> {
    if template.is_empty() {
        return Err(format!("must be a topic name template such as `outbox.event.{ROUTED_BY_VALUE}`"));
    }
    if !template.contains(ROUTED_BY_VALUE) {
        return validate_name(template);
    }
    let literal = template.replace(ROUTED_BY_VALUE, "");
    if let Some(c) = literal.chars().find(|c| !c.is_ascii() || !is_topic_byte(*c as u8)) {
        return Err(format!(
            "`{template}` contains {c:?}; outside {ROUTED_BY_VALUE} topic names use only letters, digits, '.', '_' \
             and '-'"
        ));
    }
    if literal.len() > MAX_TOPIC_LEN {
        return Err(format!("`{template}` is longer than {MAX_TOPIC_LEN} characters without its placeholder"));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn names_and_templates() {
        assert!(check_name("outbox.event.Order_v2-x").is_ok());
        assert!(check_name(&"a".repeat(249)).is_ok());
        for bad in ["", ".", "..", "a b", "a/b", "a:b", "é", &"x".repeat(250)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
            assert!(validate_name(bad).is_err_and(|m| m.contains("not a valid topic name")), "{bad:?}");
        }
        assert!(validate_template("outbox.event.${routedByValue}").is_ok());
        assert!(validate_template("fixed.topic").is_ok());
        assert!(validate_template("bad topic.${routedByValue}").is_err());
        assert!(validate_template("").is_err());
        assert!(validate_template("..").is_err());
    }
}
