//! Skimming reads what serde_json reads: the captured AdmissionReviews, generated JSON
//! with strings full of quotes, backslashes and brackets, and Pods carrying such values
//! where no rule reads them.

use std::marker::PhantomData;
use std::path::PathBuf;

use proptest::prelude::*;
use serde::de::IgnoredAny;
use serde_json::Value;

use super::step::{Marks, quote_or_backslash, string_end, value_end};
use super::*;
use crate::workload::{WorkloadKind, WorkloadSeed, decode_strictly};

/// The real AdmissionReviews captured from a kube-apiserver, by file name.
pub(crate) fn captured_reviews() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/admission");
    let mut reviews: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&path).unwrap())
        })
        .collect();
    reviews.sort();
    assert!(reviews.len() >= 10, "captured reviews in {}", dir.display());
    reviews
}

fn skimmed_value(text: &str) -> Result<Value, Refused> {
    from_str(text, PhantomData::<Value>)
}

/// A Pod read by skimming and by serde_json alone, as Debug text.
fn pod_both_ways(pod: &str) -> (String, String) {
    let skimmed = from_str(pod, WorkloadSeed(WorkloadKind::Pod)).expect("skimmed");
    let strict = decode_strictly(pod, WorkloadSeed(WorkloadKind::Pod)).expect("read");
    (format!("{skimmed:?}"), format!("{strict:?}"))
}

#[test]
fn captured_reviews_and_their_objects_are_read_alike() {
    for (name, text) in captured_reviews() {
        let strict: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(skimmed_value(&text).expect(&name), strict, "{name}");
        let object = strict["request"]["object"].to_string();
        let kind = strict["request"]["kind"]["kind"].as_str().unwrap();
        let group = strict["request"]["kind"]["group"].as_str().unwrap();
        let kind = WorkloadKind::from_group_kind(group, kind).expect(&name);
        let skimmed = from_str(&object, WorkloadSeed(kind)).expect(&name);
        let read = decode_strictly(&object, WorkloadSeed(kind)).unwrap();
        assert_eq!(format!("{skimmed:?}"), format!("{read:?}"), "{name}");
    }
}

#[test]
fn no_prefix_of_a_review_is_taken() {
    for (name, text) in captured_reviews().into_iter().take(4) {
        let cuts = (0..text.len())
            .step_by(5)
            .chain(text.len() - 64..text.len());
        for cut in cuts.filter(|&cut| text.is_char_boundary(cut)) {
            let prefix = &text[..cut];
            assert!(
                from_str(prefix, PhantomData::<IgnoredAny>).is_err(),
                "{name}[..{cut}]"
            );
            assert!(skimmed_value(prefix).is_err(), "{name}[..{cut}]");
        }
    }
}

const POD: &str = r#"{"metadata":{"name":"p","annotations":{"a":"b"},"managedFields":[SKIPPED]},
  "spec":{"containers":[{"name":"c","image":"registry.example.com/app:1","env":[{"name":"E","value":VALUE}],
  "unread":SKIPPED,"securityContext":{"privileged":false,"runAsUser":1000}}],"volumes":[{"name":"v","emptyDir":SKIPPED}]}}"#;

#[test]
fn a_key_written_with_escapes_is_read_as_serde_json_reads_it() {
    let pod = r#"{"spec":{"containers":[{"name":"c","im\u0061ge":"evil.example.com/x"}]}}"#;
    let (skimmed, strict) = pod_both_ways(pod);
    assert!(strict.contains("evil.example.com/x"), "{strict}");
    assert_eq!(skimmed, strict);
}

#[test]
fn a_string_written_to_look_like_fields_stays_one_string() {
    for value in [
        r#""\",\"image\":\"evil.example.com/x\"}],\"x\":[{\"""#,
        r#""\\\",\"image\":\"evil\"""#,
        r#""ends in a backslash \\""#,
        r#""\\\\\\\"]}]}\u0022""#,
    ] {
        let pod = POD.replace("VALUE", value).replace("SKIPPED", value);
        let (skimmed, strict) = pod_both_ways(&pod);
        assert!(strict.contains("registry.example.com/app:1"), "{strict}");
        assert!(!strict.contains("evil"), "{strict}");
        assert_eq!(skimmed, strict, "{value}");
    }
}

#[test]
fn malformed_or_unserved_text_is_refused() {
    for text in [
        r#"{"a":[1,2}"#,
        r#"{"a":{"b":1]}"#,
        r#"{"a":1,}"#,
        r#"{"a" 1}"#,
        r#"[1,]"#,
        r#"{"a":"unterminated}"#,
        r#"{"a":1} x"#,
        r#"{"a":01}"#,
        "{\"a\":\"control \u{1} character\"}",
    ] {
        assert!(skimmed_value(text).is_err(), "{text}");
    }
    // Skimming takes 127 levels at most, read and skipped: never more than serde_json.
    for depth in 120..140 {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(depth), "]".repeat(depth));
        let skimmed = from_str(&deep, PhantomData::<IgnoredAny>).is_ok();
        assert_eq!(skimmed, depth < 127, "{depth}");
        assert_eq!(skimmed_value(&deep).is_ok(), depth < 127, "{depth}");
        if skimmed {
            assert!(serde_json::from_str::<Value>(&deep).is_ok(), "{depth}");
            assert!(serde_json::from_str::<IgnoredAny>(&deep).is_ok(), "{depth}");
        }
    }
}

/// JSON values whose strings are made of what ends, escapes or nests a value, some of
/// them longer than a 64-byte block.
fn json_value() -> impl Strategy<Value = Value> {
    let text = prop_oneof![
        "[a\"\\\\{}\\[\\],: \n\té😀]{0,24}",
        "[a\"{}\\[\\]]{60,140}",
        "[a\"\\\\]{60,140}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        text.clone().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(text.clone(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn generated_json_is_read_alike(value in json_value(), pretty in any::<bool>()) {
        let text = if pretty {
            serde_json::to_string_pretty(&value).unwrap()
        } else {
            serde_json::to_string(&value).unwrap()
        };
        let strict: Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(skimmed_value(&text).unwrap(), strict);
        prop_assert!(from_str(&text, PhantomData::<IgnoredAny>).is_ok());
    }

    #[test]
    fn a_pod_with_generated_values_where_no_rule_reads_is_read_alike(
        skipped in json_value(),
        env in "[a\"\\\\{}\\[\\],:]{0,40}",
    ) {
        let pod = POD
            .replace("SKIPPED", &skipped.to_string())
            .replace("VALUE", &Value::String(env).to_string());
        let (skimmed, strict) = pod_both_ways(&pod);
        prop_assert!(strict.contains("registry.example.com/app:1"));
        prop_assert_eq!(skimmed, strict);
    }

    #[test]
    fn a_string_ends_where_serde_json_ends_it(text in "[a\"\\\\]{0,40}", after in "[,}\\]\"\\\\]{0,3}") {
        let json = Value::String(text).to_string() + &after;
        let mut values = serde_json::Deserializer::from_str(&json).into_iter::<IgnoredAny>();
        prop_assert!(values.next().is_some_and(|v| v.is_ok()));
        prop_assert_eq!(string_end(json.as_bytes(), 1), Some(values.byte_offset()));
    }

    #[test]
    fn a_value_is_stepped_over_to_where_serde_json_ends_it(
        value in json_value(),
        pretty in any::<bool>(),
        after in "[,}\\] ]{0,3}",
    ) {
        let json = if pretty {
            serde_json::to_string_pretty(&value).unwrap()
        } else {
            serde_json::to_string(&value).unwrap()
        } + &after;
        let mut values = serde_json::Deserializer::from_str(&json).into_iter::<IgnoredAny>();
        prop_assert!(values.next().is_some_and(|v| v.is_ok()));
        prop_assert_eq!(value_end(json.as_bytes(), 0, 128), Some(values.byte_offset()));
    }

    #[test]
    fn a_blocks_marks_are_its_bytes(bytes in proptest::collection::vec(
        prop_oneof![
            Just(b'"'), Just(b'\\'), Just(b'{'), Just(b'['), Just(b'}'), Just(b']'), Just(b'a'),
            Just(0x3b), Just(0x1b), Just(0xdb), Just(0xfb), Just(0xdd), Just(0x7f), Just(0),
        ],
        64,
    )) {
        let mut block = [0; 64];
        block.copy_from_slice(&bytes);
        prop_assert_eq!(Marks::of(&block), Marks::of_bytes(&block));
    }

    #[test]
    fn the_first_quote_or_backslash_is_found(bytes in proptest::collection::vec(
        prop_oneof![Just(b'"'), Just(b'\\'), Just(b'a'), Just(0u8), Just(0xffu8), Just(b'#'), Just(b']')], 0..40,
    )) {
        let first = bytes.iter().position(|&b| b == b'"' || b == b'\\');
        prop_assert_eq!(quote_or_backslash(&bytes), first);
    }
}
