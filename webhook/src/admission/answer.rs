//! The AdmissionReview answer, written straight as JSON: the answer is small and fixed
//! in shape, and building kube's `AdmissionResponse` (a `Status`, a map, owned copies of
//! every message) to serialize it cost more than deciding a small Pod.

use super::API_VERSION;

/// An `admission.k8s.io/v1` AdmissionReview answer being written; fields are added in
/// any order after the uid and `allowed`.
pub struct AnswerWriter {
    out: Vec<u8>,
}

impl AnswerWriter {
    /// Starts the answer to `uid`.
    pub fn new(uid: &str, allowed: bool, capacity: usize) -> serde_json::Result<Self> {
        let mut out = Vec::with_capacity(160 + uid.len() + capacity);
        out.extend_from_slice(br#"{"apiVersion":""#);
        out.extend_from_slice(API_VERSION.as_bytes());
        out.extend_from_slice(br#"","kind":"AdmissionReview","response":{"uid":"#);
        serde_json::to_writer(&mut out, uid)?;
        out.extend_from_slice(if allowed {
            br#","allowed":true"#
        } else {
            br#","allowed":false"#
        });
        Ok(AnswerWriter { out })
    }

    /// `status` of an allowed answer.
    pub fn success(&mut self) {
        self.out
            .extend_from_slice(br#","status":{"status":"Success"}"#);
    }

    /// `status` of a refusal: `code` (403, 422), `reason` (`Forbidden`) and the message.
    pub fn failure(&mut self, code: u16, reason: &str, message: &str) -> serde_json::Result<()> {
        self.out
            .extend_from_slice(br#","status":{"status":"Failure","code":"#);
        self.out.extend_from_slice(code.to_string().as_bytes());
        self.out.extend_from_slice(br#","message":"#);
        serde_json::to_writer(&mut self.out, message)?;
        self.out.extend_from_slice(br#","reason":"#);
        serde_json::to_writer(&mut self.out, reason)?;
        self.out.push(b'}');
        Ok(())
    }

    /// `warnings`, unless there are none.
    pub fn warnings(&mut self, warnings: &[String]) -> serde_json::Result<()> {
        if warnings.is_empty() {
            return Ok(());
        }
        self.out.extend_from_slice(br#","warnings":"#);
        serde_json::to_writer(&mut self.out, warnings)
    }

    /// `auditAnnotations` with one annotation.
    pub fn audit_annotation(&mut self, key: &str, value: &str) -> serde_json::Result<()> {
        self.out.extend_from_slice(br#","auditAnnotations":{"#);
        serde_json::to_writer(&mut self.out, key)?;
        self.out.push(b':');
        serde_json::to_writer(&mut self.out, value)?;
        self.out.push(b'}');
        Ok(())
    }

    /// A field written by the caller: `name` and then the value it appends to the
    /// returned buffer, which must be valid JSON.
    pub fn field(&mut self, name: &str) -> &mut Vec<u8> {
        self.out.extend_from_slice(b",\"");
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
        &mut self.out
    }

    /// The answer's bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.out.extend_from_slice(b"}}");
        self.out
    }
}
