//! A mutation engine without coverage feedback: each input is a seed (or a
//! splice of two) changed by a few random edits that keep much of its
//! structure (bit flips, interesting bytes, deleted, duplicated or moved
//! runs, dictionary tokens inserted or overwritten). Deterministic for a seed.

use optc_search::rng::Rng;

const INTERESTING: &[u8] = &[
    0, 0x7f, 0x80, 0xff, b'\n', b'"', b'(', b')', b'{', b'}', b'[', b']', b';', b'0', b'9',
];

/// Inputs longer than this are cut (the targets' own size limits are tested
/// by the robustness tests).
const MAX_LEN: usize = 1 << 16;

/// A new input from `seeds`.
pub fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], dictionary: &[&str]) -> Vec<u8> {
    let mut input = seeds[rng.below(seeds.len())].clone();
    if rng.below(8) == 0 && seeds.len() > 1 {
        let other = &seeds[rng.below(seeds.len())];
        let (cut, from) = (rng.below(input.len() + 1), rng.below(other.len() + 1));
        input.truncate(cut);
        input.extend_from_slice(&other[from..]);
    }
    for _ in 0..1 + rng.below(8) {
        let len = input.len();
        let at = rng.below(len + 1);
        match rng.below(7) {
            0 if len > 0 => input[at.min(len - 1)] ^= 1 << rng.below(8),
            1 if len > 0 => input[at.min(len - 1)] = INTERESTING[rng.below(INTERESTING.len())],
            2 => {
                let end = (at + 1 + rng.below(32)).min(len);
                input.drain(at..end.max(at));
            }
            3 if len > 0 => {
                let end = (at + 1 + rng.below(64)).min(len);
                let run: Vec<u8> = input[at.min(len - 1)..end.max(at.min(len - 1))].to_vec();
                let to = rng.below(input.len() + 1);
                input.splice(to..to, run);
            }
            4 | 5 if !dictionary.is_empty() => {
                let token = dictionary[rng.below(dictionary.len())].as_bytes();
                input.splice(at..at, token.iter().copied());
            }
            _ if !dictionary.is_empty() && len > 0 => {
                let token = dictionary[rng.below(dictionary.len())].as_bytes();
                let end = (at + token.len()).min(len);
                input.splice(at.min(end)..end, token.iter().copied());
            }
            _ => {}
        }
    }
    input.truncate(MAX_LEN);
    input
}
