//! Fuzz target: the extractor of format Custom, with every check of the library's
//! `check`. Built and run by `hack/fuzz.sh custom SECONDS`.

use tokenbudget::api::MetricsFormat;

fn main() {
    let strict = tokenbudget_fuzz::strict_reasons_from_env();
    afl::fuzz!(|body: &[u8]| {
        tokenbudget_fuzz::check(MetricsFormat::Custom, body, strict);
    });
}
