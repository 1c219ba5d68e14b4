//! Building requests and reading answers (the agent's side).

use core::time::Duration;

use super::{Heartbeat, HB_MAGIC, HB_REPLY, HB_REQUEST, HB_VERSION};

/// The payload of a request with `nonce`.
pub fn request(nonce: u64) -> [u8; 24] {
    let h = Heartbeat {
        magic: HB_MAGIC,
        version: HB_VERSION,
        kind: HB_REQUEST,
        _pad: [0; 2],
        nonce: nonce.to_be_bytes(),
        healthy_for_ns: [0; 8],
    };
    bytes(&h)
}

fn bytes(h: &Heartbeat) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[..4].copy_from_slice(&h.magic);
    b[4] = h.version;
    b[5] = h.kind;
    b[6..8].copy_from_slice(&h._pad);
    b[8..16].copy_from_slice(&h.nonce);
    b[16..24].copy_from_slice(&h.healthy_for_ns);
    b
}

/// The member's healthy time, if `payload` is an answer to the request with `nonce`
/// (anything else: `None`: a forged or stale answer, a request, another protocol).
pub fn reply_of(payload: &[u8], nonce: u64) -> Option<Duration> {
    let b: &[u8; 24] = payload.try_into().ok()?;
    let ok = b[..4] == HB_MAGIC
        && b[4] == HB_VERSION
        && b[5] == HB_REPLY
        && b[8..16] == nonce.to_be_bytes();
    ok.then(|| Duration::from_nanos(u64::from_be_bytes(b[16..24].try_into().expect("8 bytes"))))
}

#[cfg(test)]
mod tests {
    use super::{
        super::{HB_HEALTHY_FOR_OFF, HB_KIND_OFF},
        *,
    };

    fn answer(req: &[u8; 24], healthy_for: u64) -> [u8; 24] {
        let mut a = *req;
        a[HB_KIND_OFF] = HB_REPLY;
        a[HB_HEALTHY_FOR_OFF..].copy_from_slice(&healthy_for.to_be_bytes());
        a
    }

    #[test]
    fn an_answer_with_the_nonce_gives_the_healthy_time() {
        let req = request(0x0102_0304_0506_0708);
        assert_eq!(&req[..6], b"EGWH\x01\x01");
        assert_eq!(req[8..16], [1, 2, 3, 4, 5, 6, 7, 8]);
        let a = answer(&req, 2_500_000_000);
        assert_eq!(
            reply_of(&a, 0x0102_0304_0506_0708),
            Some(Duration::from_millis(2500))
        );
    }

    #[test]
    fn a_wrong_nonce_a_request_or_garbage_is_no_answer() {
        let req = request(7);
        let a = answer(&req, 1);
        assert_eq!(reply_of(&a, 8), None, "another request's nonce");
        assert_eq!(reply_of(&req, 7), None, "the request itself");
        assert_eq!(reply_of(&a[..23], 7), None, "short");
        let mut bad = a;
        bad[0] = b'X';
        assert_eq!(reply_of(&bad, 7), None, "magic");
        let mut v2 = a;
        v2[4] = 2;
        assert_eq!(reply_of(&v2, 7), None, "version");
    }
}
