//! Writes the CustomResourceDefinitions generated from the Rust types.
//!
//! `crdgen` prints both CRDs as one YAML stream; `crdgen DIR` writes one file per CRD into
//! DIR. `crdgen crds`, run from the repository's root, writes both of the repository's
//! copies ([`tokenbudget::crds::DIRS`]: `crds/` and the Helm chart's), which a test keeps
//! identical to the types.

use std::path::{Path, PathBuf};

fn main() {
    let dir = std::env::args_os().nth(1).map(PathBuf::from);
    let crds = tokenbudget::crds::all();
    let Some(dir) = dir else {
        for (_, yaml) in &crds {
            print!("---\n{yaml}");
        }
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dirs: Vec<PathBuf> = if same_dir(&dir, &root.join(tokenbudget::crds::DIRS[0])) {
        tokenbudget::crds::DIRS.iter().map(|d| root.join(d)).collect()
    } else {
        vec![dir]
    };
    for dir in dirs {
        for (file, yaml) in &crds {
            let path = dir.join(file);
            if let Err(e) = std::fs::write(&path, yaml) {
                eprintln!("crdgen: cannot write {}: {e}", path.display());
                std::process::exit(1);
            }
            eprintln!("crdgen: wrote {}", path.display());
        }
    }
}

/// Whether two paths name the same existing directory.
fn same_dir(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}
