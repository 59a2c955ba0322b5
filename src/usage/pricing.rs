//! Money: prices per model, the cost of tokens, the money strings of the status and
//! `percentUsed`. Exact decimals ([`rust_decimal::Decimal`], 96-bit integer with a decimal
//! scale); no floats anywhere.
//!
//! ```
//! use tokenbudget::api::ModelPrice;
//! use tokenbudget::usage::{PriceTable, format_money};
//!
//! let prices = [ModelPrice { model: "gpt-4o-mini*".into(), input: "0.15".into(), output: "0.60".into() }];
//! let table = PriceTable::new(&prices).unwrap();
//! let cost = table.cost("gpt-4o-mini-2024-07-18", 1000, 200).unwrap();
//! assert_eq!(format_money(cost), "0.00027");
//! assert_eq!(table.cost("claude", 1000, 200), None);
//! ```

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};

use crate::api::ModelPrice;

/// One entry of `spec.pricing`, parsed: prices per 1,000,000 tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelPriceDecimal {
    /// An exact model name, or a glob where `*` matches any run of characters.
    pub model: String,
    pub input: Decimal,
    pub output: Decimal,
}

/// Why a money string (a price or `limits.cost`) is not an amount.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("{0:?} is not a decimal number such as \"0.15\" or \"250.00\"")]
    NotDecimal(String),
    #[error("{0:?} has more digits than can be kept exactly")]
    TooManyDigits(String),
}

/// An unparsable price of `spec.pricing`, with the field it is in.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("spec.pricing[{index}].{field}: {source}")]
pub struct PriceError {
    /// The entry of `spec.pricing`.
    pub index: usize,
    /// `input` or `output`.
    pub field: &'static str,
    pub source: MoneyError,
}

/// The prices of a budget, in the order of `spec.pricing`: the first entry that matches a
/// model wins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PriceTable {
    entries: Vec<ModelPriceDecimal>,
}

const MILLION_SCALE: u32 = 6;

impl PriceTable {
    /// Parses `spec.pricing`. An unparsable price is an error naming its field, e.g.
    /// `spec.pricing[2].input: "1,5" is not a decimal number such as "0.15" or "250.00"`.
    pub fn new(prices: &[ModelPrice]) -> Result<Self, PriceError> {
        let entries = prices
            .iter()
            .enumerate()
            .map(|(index, p)| {
                let field = |field: &'static str, value: &str| {
                    parse_money(value).map_err(|source| PriceError { index, field, source })
                };
                Ok(ModelPriceDecimal {
                    model: p.model.clone(),
                    input: field("input", &p.input)?,
                    output: field("output", &p.output)?,
                })
            })
            .collect::<Result<_, PriceError>>()?;
        Ok(Self { entries })
    }

    /// The entries, in order.
    pub fn entries(&self) -> &[ModelPriceDecimal] {
        &self.entries
    }

    /// The price of `model`: the first entry whose `model` is `model` or a glob matching it.
    pub fn price(&self, model: &str) -> Option<&ModelPriceDecimal> {
        self.entries.iter().find(|e| glob_match(&e.model, model))
    }

    /// The cost of `input` and `output` tokens of `model`, or `None` when no entry prices it:
    /// `input * price.input / 10^6 + output * price.output / 10^6`.
    ///
    /// Exact to Decimal's 28 significant digits, which is exact for any real amount: tokens
    /// enter as `tokens / 10^6` (exact), times a price of at most 12 decimals. A result beyond
    /// Decimal's range (about 7.9 * 10^28) saturates at [`Decimal::MAX`], which is more than
    /// any limit: with prices within the schema's pattern (below 10^15) even `u64::MAX` tokens
    /// stay in range, so this only happens with absurd prices.
    pub fn cost(&self, model: &str, input: u64, output: u64) -> Option<Decimal> {
        let price = self.price(model)?;
        Some(tokens_cost(input, price.input).saturating_add(tokens_cost(output, price.output)))
    }
}

/// `tokens * per_million / 10^6`, saturating at `Decimal::MAX`.
fn tokens_cost(tokens: u64, per_million: Decimal) -> Decimal {
    // A u64 always fits Decimal's 96-bit mantissa, and scale 6 is the exact division.
    let millions = Decimal::from_i128_with_scale(i128::from(tokens), MILLION_SCALE);
    millions.checked_mul(per_million).unwrap_or(Decimal::MAX)
}

/// Whether `name` matches `pattern`, where `*` matches any run of characters (possibly empty)
/// and everything else matches itself, case-sensitively. A pattern without `*` is an exact
/// name. No allocation; at worst O(len(pattern) * len(name)), with backtracking only to the
/// last `*`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    // Bytes are enough: `*` is ASCII and cannot occur inside a multi-byte UTF-8 sequence, so
    // literal runs of the (valid UTF-8) pattern only ever match whole characters.
    let (p, s) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut si) = (0, 0);
    // After the last `*` seen: where the pattern resumes, and where in `name` that `*`'s match
    // currently ends.
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                pi += 1;
                star = Some((pi, si));
            }
            Some(&c) if c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                // Let the last `*` swallow one more character and try again from there.
                Some((resume, swallowed)) => {
                    pi = resume;
                    si = swallowed + 1;
                    star = Some((resume, si));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Money as the status shows it (`used.cost`, `models[].cost`): at least 2 and at most 6
/// decimal places, rounded half away from zero, trailing zeros beyond the 2nd trimmed:
/// 0.27 -> "0.27", 1.5 -> "1.50", 0.00015 -> "0.00015", 0.0000004 -> "0.00", 250 -> "250.00".
pub fn format_money(d: Decimal) -> String {
    // `normalize` also turns the -0 that rounding a tiny negative amount gives into 0.
    let s = d
        .round_dp_with_strategy(6, RoundingStrategy::MidpointAwayFromZero)
        .normalize()
        .to_string();
    match s.split_once('.') {
        None => format!("{s}.00"),
        Some((int, frac)) if frac.len() < 2 => format!("{int}.{frac:0<2}"),
        Some(_) => s,
    }
}

/// Parses a non-negative plain decimal such as `limits.cost` ("250.00") or a price ("0.15"):
/// digits, optionally a `.` and more digits. No sign, exponent, separators or spaces, and no
/// more digits than Decimal holds exactly (28 or 29 significant digits; the schema allows 15
/// before and 12 after the point).
pub fn parse_money(s: &str) -> Result<Decimal, MoneyError> {
    let (int, frac) = s.split_once('.').unwrap_or((s, "0"));
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !digits(frac) {
        return Err(MoneyError::NotDecimal(s.into()));
    }
    Decimal::from_str_exact(s).map_err(|_| MoneyError::TooManyDigits(s.into()))
}

/// `percentUsed`: the larger of the two percentages (the tighter limit), rounded down. A limit
/// of zero is 100% used from the start. `None` when there is neither limit.
///
/// The cost percentage is exact to Decimal's precision (28 significant digits); percentages
/// beyond `u64` (a tiny limit and a huge use) saturate at `u64::MAX`.
pub fn percent_used(
    used_tokens: u64,
    limit_tokens: Option<u64>,
    used_cost: Decimal,
    limit_cost: Option<Decimal>,
) -> Option<u64> {
    let tokens = limit_tokens.map(|limit| match limit {
        0 => 100,
        _ => u64::try_from(u128::from(used_tokens) * 100 / u128::from(limit)).unwrap_or(u64::MAX),
    });
    let cost = limit_cost.map(|limit| cost_percent(used_cost, limit));
    // `None` orders before any `Some`.
    tokens.max(cost)
}

fn cost_percent(used: Decimal, limit: Decimal) -> u64 {
    if limit <= Decimal::ZERO {
        return 100;
    }
    if used <= Decimal::ZERO {
        return 0;
    }
    let scaled = used.checked_mul(Decimal::ONE_HUNDRED);
    let quotient = match scaled {
        Some(scaled) => scaled.checked_div(limit),
        None => used
            .checked_div(limit)
            .and_then(|q| q.checked_mul(Decimal::ONE_HUNDRED)),
    };
    let Some(quotient) = quotient else {
        return u64::MAX;
    };
    let mut percent = quotient.floor();
    // A quotient rounded (at the 28th digit) up onto a whole number is one too many.
    if let (Some(scaled), Some(back)) = (scaled, percent.checked_mul(limit))
        && back > scaled
    {
        percent -= Decimal::ONE;
    }
    percent.to_u64().unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    fn price(model: &str, input: &str, output: &str) -> ModelPrice {
        ModelPrice {
            model: model.into(),
            input: input.into(),
            output: output.into(),
        }
    }

    #[test]
    fn glob_exact_names() {
        assert!(glob_match("gpt-4o", "gpt-4o"));
        assert!(!glob_match("gpt-4o", "gpt-4o-mini"));
        assert!(!glob_match("gpt-4o-mini", "gpt-4o"));
        assert!(!glob_match("GPT-4o", "gpt-4o"), "case-sensitive");
        assert!(glob_match("", ""));
        assert!(!glob_match("", "a"));
        assert!(!glob_match("a", ""));
        // `?`, `[` and `.` are ordinary characters.
        assert!(glob_match("a?b[c].d", "a?b[c].d"));
        assert!(!glob_match("a?b", "axb"));
        assert!(!glob_match("a.b", "axb"));
    }

    #[test]
    fn glob_stars() {
        assert!(glob_match("gpt-4o*", "gpt-4o"));
        assert!(glob_match("gpt-4o*", "gpt-4o-mini"));
        assert!(!glob_match("gpt-4o*", "gpt-4"));
        assert!(!glob_match("gpt-4o*", "xgpt-4o"));
        assert!(glob_match("*mini*", "gpt-4o-mini"));
        assert!(glob_match("*mini*", "mini"));
        assert!(glob_match("*mini*", "o1-mini-2024"));
        assert!(!glob_match("*mini*", "gpt-4o-min"));
        assert!(glob_match("*", ""));
        assert!(glob_match("*", "anything at all"));
        assert!(glob_match("**", "x"));
        assert!(glob_match("a*b*c", "abc"));
        assert!(glob_match("a*b*c", "a-b-c"));
        assert!(glob_match("a*b*c", "aXXbYYbZZc"));
        assert!(glob_match("a*b*c", "abcbc"));
        assert!(!glob_match("a*b*c", "acb"));
        assert!(!glob_match("a*b*c", "abcd"));
        assert!(!glob_match("a*b*c", "bc"));
        assert!(glob_match("*-2024-*", "gpt-4o-2024-08-06"));
        assert!(glob_match("*.gguf", "llama.q4.gguf"));
        assert!(!glob_match("*.gguf", "llama.gguf.bak"));
        // Backtracking: the first candidate for the literal after `*` is not the right one.
        assert!(glob_match("*aab", "aaaab"));
        assert!(glob_match("*ab*ab", "abxabab"));
        assert!(!glob_match("*ab*ab", "abxaba"));
    }

    #[test]
    fn glob_non_ascii() {
        assert!(glob_match("modèle-*", "modèle-ü"));
        assert!(glob_match("*é", "café"));
        assert!(!glob_match("*e", "café"));
        assert!(glob_match("caf*", "café"));
    }

    /// Against a straightforward recursive matcher, on all short strings over a small alphabet.
    #[test]
    fn glob_agrees_with_a_reference() {
        fn reference(p: &[u8], s: &[u8]) -> bool {
            match p.split_first() {
                None => s.is_empty(),
                Some((b'*', rest)) => (0..=s.len()).any(|i| reference(rest, &s[i..])),
                Some((c, rest)) => s.first() == Some(c) && reference(rest, &s[1..]),
            }
        }
        fn all(alphabet: &[u8], max: usize) -> Vec<String> {
            let mut out = vec![String::new()];
            let mut last = vec![String::new()];
            for _ in 0..max {
                last = last
                    .iter()
                    .flat_map(|w| alphabet.iter().map(move |&c| format!("{w}{}", c as char)))
                    .collect();
                out.extend(last.iter().cloned());
            }
            out
        }
        let patterns = all(b"ab*", 5);
        let names = all(b"ab", 6);
        for p in &patterns {
            for s in &names {
                assert_eq!(glob_match(p, s), reference(p.as_bytes(), s.as_bytes()), "{p:?} {s:?}");
            }
        }
    }

    #[test]
    fn first_match_wins() {
        let table = PriceTable::new(&[
            price("gpt-4o-mini", "0.15", "0.60"),
            price("gpt-4o*", "2.50", "10"),
            price("*", "1", "1"),
        ])
        .unwrap();
        assert_eq!(table.price("gpt-4o-mini").unwrap().input, dec("0.15"));
        assert_eq!(table.price("gpt-4o-mini-2024-07-18").unwrap().input, dec("2.50"));
        assert_eq!(table.price("gpt-4o").unwrap().output, dec("10"));
        assert_eq!(table.price("llama").unwrap().model, "*");
        assert_eq!(table.entries().len(), 3);

        let no_catch_all = PriceTable::new(&[price("gpt-*", "1", "2")]).unwrap();
        assert_eq!(no_catch_all.price("claude"), None);
        assert_eq!(no_catch_all.cost("claude", 10, 10), None);
        assert_eq!(PriceTable::default().price("x"), None);
    }

    #[test]
    fn an_unparsable_price_names_its_field() {
        let err = PriceTable::new(&[price("a", "1", "2"), price("b", "1,5", "2")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("spec.pricing[1].input: \"1,5\""), "{err}");
        let err = PriceTable::new(&[price("a", "1", "-2")]).unwrap_err().to_string();
        assert!(err.starts_with("spec.pricing[0].output: \"-2\""), "{err}");
        let err = PriceTable::new(&[price("a", "", "2")]).unwrap_err().to_string();
        assert!(err.starts_with("spec.pricing[0].input: \"\""), "{err}");
    }

    #[test]
    fn cost_is_exact() {
        let table = PriceTable::new(&[price("gpt-4o-mini", "0.15", "0.60"), price("gpt-4o", "2.50", "10.00")]).unwrap();
        // The API's example: 1000 input and 200 output tokens of gpt-4o-mini.
        assert_eq!(table.cost("gpt-4o-mini", 1000, 200), Some(dec("0.00027")));
        assert_eq!(table.cost("gpt-4o-mini", 1_000_000, 1_000_000), Some(dec("0.75")));
        assert_eq!(table.cost("gpt-4o", 0, 0), Some(Decimal::ZERO));
        assert_eq!(table.cost("gpt-4o", 1, 0), Some(dec("0.0000025")));
        assert_eq!(table.cost("gpt-4o", 3, 7), Some(dec("0.0000775")));
        // Floats would not give exactly 0.3 here.
        let tenth = PriceTable::new(&[price("m", "0.1", "0.2")]).unwrap();
        assert_eq!(tenth.cost("m", 1_000_000, 1_000_000), Some(dec("0.3")));
        // Many small costs add up exactly.
        let sum: Decimal = (0..1000).map(|_| tenth.cost("m", 1, 0).unwrap()).sum();
        assert_eq!(sum, dec("0.0001"));
        // The smallest price the schema allows, on one token.
        let tiny = PriceTable::new(&[price("m", "0.000000000001", "0")]).unwrap();
        assert_eq!(tiny.cost("m", 1, 0), Some(dec("0.000000000000000001")));
    }

    #[test]
    fn cost_of_large_values() {
        // 10^15 tokens (the parser's per-series maximum) at 1,000,000 per million: 10^15.
        let table = PriceTable::new(&[price("m", "1000000", "1000000")]).unwrap();
        let quadrillion = 1_000_000_000_000_000;
        assert_eq!(table.cost("m", quadrillion, 0), Some(dec("1000000000000000")));
        assert_eq!(table.cost("m", quadrillion, quadrillion), Some(dec("2000000000000000")));
        // The largest price the schema allows, with u64::MAX tokens of both kinds: about 3.7e28,
        // still in range (rounded to Decimal's precision).
        let max_price = "999999999999999.999999999999";
        let table = PriceTable::new(&[price("m", max_price, max_price)]).unwrap();
        let cost = table.cost("m", u64::MAX, u64::MAX).unwrap();
        assert!(cost < Decimal::MAX);
        let expected = dec("36893488147419.10323") * dec("999999999999999.999999999999");
        // Each of the two parts is rounded to Decimal's 28-29 digits: off by at most 1 each.
        assert!((cost - expected).abs() <= Decimal::TWO, "{cost} vs {expected}");
        assert_eq!(format_money(cost), format!("{}.00", cost.trunc()));
        // Beyond the schema: a price near Decimal::MAX saturates instead of overflowing.
        let absurd = PriceTable::new(&[price("m", "79228162514264337593543950335", "1")]).unwrap();
        assert_eq!(absurd.cost("m", u64::MAX, 0), Some(Decimal::MAX));
        assert_eq!(absurd.cost("m", 1_000_000, 1), Some(Decimal::MAX));
        // ...and reads as exhausted: far more than 100% of any limit (beyond u64: saturated).
        assert_eq!(percent_used(0, None, Decimal::MAX, Some(dec("250"))), Some(u64::MAX));
    }

    #[test]
    fn money_strings() {
        assert_eq!(format_money(dec("0.27")), "0.27");
        assert_eq!(format_money(dec("1.5")), "1.50");
        assert_eq!(format_money(dec("0.00015")), "0.00015");
        assert_eq!(format_money(dec("0.0000004")), "0.00");
        assert_eq!(format_money(dec("250")), "250.00");
        assert_eq!(format_money(dec("250.000000")), "250.00");
        assert_eq!(format_money(Decimal::ZERO), "0.00");
        assert_eq!(format_money(dec("0.1234564")), "0.123456");
        // Half away from zero at the 7th decimal.
        assert_eq!(format_money(dec("0.0000005")), "0.000001");
        assert_eq!(format_money(dec("0.0000015")), "0.000002");
        assert_eq!(format_money(dec("0.0000025")), "0.000003");
        assert_eq!(format_money(dec("0.9999995")), "1.00");
        assert_eq!(format_money(dec("0.00027")), "0.00027");
        assert_eq!(format_money(dec("12345678901234.5")), "12345678901234.50");
        assert_eq!(format_money(Decimal::MAX), "79228162514264337593543950335.00");
        // Costs are never negative, but the format would still hold.
        assert_eq!(format_money(dec("-1.5")), "-1.50");
        assert_eq!(format_money(dec("-0.0000004")), "0.00");
        // The strings read back as the same amounts.
        for s in ["0.27", "1.50", "0.00015", "250.00"] {
            assert_eq!(format_money(parse_money(s).unwrap()), s);
        }
    }

    #[test]
    fn parse_money_is_strict() {
        assert_eq!(parse_money("250.00"), Ok(dec("250.00")));
        assert_eq!(parse_money("0"), Ok(Decimal::ZERO));
        assert_eq!(parse_money("007.5"), Ok(dec("7.5")));
        assert_eq!(
            parse_money("999999999999999.999999999999"),
            Ok(dec("999999999999999.999999999999"))
        );
        assert_eq!(parse_money("79228162514264337593543950335"), Ok(Decimal::MAX));
        for bad in [
            "", ".", "1.", ".5", "-1", "+1", "1e3", "1_000", "1,5", " 1", "1 ", "0x10", "NaN", "inf", "1.2.3", "١",
        ] {
            assert!(parse_money(bad).is_err(), "{bad:?}");
        }
        // Too many digits to keep exactly: an error, not a rounded amount.
        assert!(parse_money("79228162514264337593543950336").is_err());
        assert!(parse_money("0.00000000000000000000000000001").is_err());
        let err = parse_money("abc").unwrap_err().to_string();
        assert!(err.contains("\"abc\""), "{err}");
    }

    #[test]
    fn percent_of_the_tighter_limit() {
        let zero = Decimal::ZERO;
        assert_eq!(percent_used(0, None, zero, None), None);
        assert_eq!(percent_used(1200, Some(5_000_000), zero, None), Some(0));
        assert_eq!(percent_used(50_000, Some(5_000_000), zero, None), Some(1));
        assert_eq!(percent_used(4_999_999, Some(5_000_000), zero, None), Some(99));
        assert_eq!(percent_used(5_000_000, Some(5_000_000), zero, None), Some(100));
        assert_eq!(percent_used(7_500_000, Some(5_000_000), zero, None), Some(150));
        assert_eq!(percent_used(0, None, dec("0.27"), Some(dec("250.00"))), Some(0));
        assert_eq!(percent_used(0, None, dec("2.50"), Some(dec("250.00"))), Some(1));
        assert_eq!(percent_used(0, None, dec("249.99"), Some(dec("250.00"))), Some(99));
        assert_eq!(percent_used(0, None, dec("250"), Some(dec("250.00"))), Some(100));
        assert_eq!(percent_used(0, None, dec("2"), Some(dec("3"))), Some(66));
        // Both limits: the larger percentage.
        assert_eq!(
            percent_used(4_000_000, Some(5_000_000), dec("125"), Some(dec("250"))),
            Some(80)
        );
        assert_eq!(
            percent_used(1_000_000, Some(5_000_000), dec("225"), Some(dec("250"))),
            Some(90)
        );
        // A cost limit with no cost yet, a token limit with no tokens yet.
        assert_eq!(percent_used(0, Some(10), zero, Some(dec("1"))), Some(0));
    }

    #[test]
    fn a_zero_limit_is_exhausted_from_the_start() {
        let zero = Decimal::ZERO;
        assert_eq!(percent_used(0, Some(0), zero, None), Some(100));
        assert_eq!(percent_used(5, Some(0), zero, None), Some(100));
        assert_eq!(percent_used(0, None, zero, Some(zero)), Some(100));
        assert_eq!(percent_used(0, None, dec("1"), Some(dec("0.00"))), Some(100));
        // ...and the tighter of the two, with a roomy other limit.
        assert_eq!(percent_used(0, Some(1000), zero, Some(zero)), Some(100));
        assert_eq!(percent_used(2000, Some(1000), zero, Some(zero)), Some(200));
    }

    #[test]
    fn percent_of_extreme_values() {
        let zero = Decimal::ZERO;
        assert_eq!(percent_used(u64::MAX, Some(u64::MAX), zero, None), Some(100));
        assert_eq!(
            percent_used(u64::MAX / 100, Some(1), zero, None),
            Some(u64::MAX / 100 * 100)
        );
        assert_eq!(percent_used(u64::MAX, Some(1), zero, None), Some(u64::MAX));
        assert_eq!(percent_used(1, Some(u64::MAX), zero, None), Some(0));
        // A huge cost over a tiny limit: beyond Decimal, saturates.
        assert_eq!(
            percent_used(0, None, Decimal::MAX, Some(dec("0.000000000001"))),
            Some(u64::MAX)
        );
        assert_eq!(percent_used(0, None, Decimal::MAX, Some(Decimal::MAX)), Some(100));
        assert_eq!(percent_used(0, None, dec("1"), Some(Decimal::MAX)), Some(0));
        // A negative cost (never produced) counts as none.
        assert_eq!(percent_used(0, None, dec("-5"), Some(dec("1"))), Some(0));
        // Just below the limit, at Decimal's precision, is still below 100.
        let limit = dec("1.000000000000000000000000001");
        assert_eq!(percent_used(0, None, dec("1"), Some(limit)), Some(99));
        let almost = dec("0.999999999999999999999999999");
        assert_eq!(percent_used(0, None, almost, Some(Decimal::ONE)), Some(99));
    }
}
