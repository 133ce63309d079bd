//! The bytes of one Raft message between agents: a version, the sender's cluster id and the
//! raft-rs message in protobuf. The transport carries them as they are (QUIC: a stream of
//! their own after the hello; it also says which authenticated node sent them).

use protobuf::Message as _;
use raft::eraftpb::Message;

/// Format version of the envelope.
pub const ENVELOPE_VERSION: u8 = 1;
/// Largest envelope accepted or sent. A Raft message carries a few entries or a snapshot of
/// the state machine (`state::MAX_STATE_BYTES` at most).
pub const MAX_ENVELOPE_BYTES: usize = 9 * 1024 * 1024;
/// A term at or above this is refused: no real cluster gets near it, and a peer that sends one
/// would leave nothing to count up to (terms are the leader's fencing epochs).
pub const MAX_TERM: u64 = 1 << 62;

const HEADER: usize = 1 + 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("a Raft message of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("a Raft message of {0} bytes is too short")]
    TooShort(usize),
    #[error("unknown Raft envelope version {0}")]
    Version(u8),
    #[error("the Raft message does not decode: {0}")]
    Malformed(String),
    #[error("the Raft message's term {0} is out of range")]
    Term(u64),
}

pub fn encode(cluster_id: u64, msg: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + msg.compute_size() as usize);
    out.push(ENVELOPE_VERSION);
    out.extend_from_slice(&cluster_id.to_le_bytes());
    // Writing a message built by raft-rs into a Vec cannot fail.
    let _ = msg.write_to_vec(&mut out);
    out
}

/// The sender's cluster id and its message. Every term in it (the message's, its log term,
/// its entries', its snapshot's) is checked against [`MAX_TERM`].
pub fn decode(bytes: &[u8]) -> Result<(u64, Message), EnvelopeError> {
    if bytes.len() > MAX_ENVELOPE_BYTES {
        return Err(EnvelopeError::TooLarge(bytes.len()));
    }
    if bytes.len() < HEADER {
        return Err(EnvelopeError::TooShort(bytes.len()));
    }
    if bytes[0] != ENVELOPE_VERSION {
        return Err(EnvelopeError::Version(bytes[0]));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&bytes[1..HEADER]);
    let msg = Message::parse_from_bytes(&bytes[HEADER..])
        .map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    let snapshot_term = msg.get_snapshot().get_metadata().term;
    let terms = [msg.term, msg.log_term, msg.commit_term, snapshot_term]
        .into_iter()
        .chain(msg.get_entries().iter().map(|e| e.term));
    for term in terms {
        if term >= MAX_TERM {
            return Err(EnvelopeError::Term(term));
        }
    }
    Ok((u64::from_le_bytes(id), msg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use raft::eraftpb::{Entry, MessageType};

    fn sample() -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = 2;
        m.from = 1;
        m.term = 3;
        let mut e = Entry::default();
        e.term = 3;
        e.index = 7;
        e.data = vec![1, 2, 3].into();
        m.mut_entries().push(e);
        m
    }

    #[test]
    fn round_trips() {
        let bytes = encode(99, &sample());
        assert_eq!(decode(&bytes).unwrap(), (99, sample()));
    }

    #[test]
    fn absurd_terms_are_refused() {
        let mut m = sample();
        m.term = u64::MAX;
        assert_eq!(decode(&encode(1, &m)), Err(EnvelopeError::Term(u64::MAX)));
        let mut m = sample();
        m.mut_entries()[0].term = MAX_TERM;
        assert_eq!(decode(&encode(1, &m)), Err(EnvelopeError::Term(MAX_TERM)));
    }

    proptest! {
        /// Arbitrary bytes, and a valid message cut, flipped or extended anywhere, decode to a
        /// message or an error, never a panic.
        #[test]
        fn fuzz_envelope_decoder(
            junk in proptest::collection::vec(any::<u8>(), 0..512),
            cut in 0usize..64,
            flip in 0usize..64,
            bit in 0u8..8,
        ) {
            let _ = decode(&junk);
            let mut valid = encode(5, &sample());
            if flip < valid.len() {
                valid[flip] ^= 1 << bit;
            }
            let _ = decode(&valid);
            valid.truncate(valid.len().saturating_sub(cut));
            let _ = decode(&valid);
            valid.extend_from_slice(&junk);
            let _ = decode(&valid);
        }
    }
}
