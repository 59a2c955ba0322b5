//! The `tokenbudget.io/v1alpha1` API: the two custom resources and nothing else.
//!
//! Every spec field's doc comment becomes its description in the generated CRD (so
//! `kubectl explain tb.spec.period` is useful), and the validation a 1.20 API server must
//! enforce on its own (it drops CEL rules) lives in the OpenAPI schema: `minimum`, `enum`,
//! `pattern`, `required`, `oneOf`/`anyOf`.

// clippy reads the repeated `printcolumn(name = .., type_ = ..)` keys of `#[kube]` as duplicated
// attributes; they are separate columns.
#[allow(clippy::duplicated_attributes)]
mod binding;
#[allow(clippy::duplicated_attributes)]
mod budget;
mod common;

pub use binding::*;
pub use budget::*;
pub use common::*;

/// The API group of both kinds.
pub const GROUP: &str = "tokenbudget.io";
/// The API version of both kinds.
pub const VERSION: &str = "v1alpha1";
