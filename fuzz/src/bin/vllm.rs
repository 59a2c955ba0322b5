//! Fuzz target: the extractor of format Vllm, with every check of the library's
//! `check`. Built and run by `hack/fuzz.sh vllm SECONDS`.

use tokenbudget::api::MetricsFormat;

fn main() {
    let strict = tokenbudget_fuzz::strict_reasons_from_env();
    afl::fuzz!(|body: &[u8]| {
        tokenbudget_fuzz::check(MetricsFormat::Vllm, body, strict);
    });
}
