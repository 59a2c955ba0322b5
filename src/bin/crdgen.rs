//! Writes the CustomResourceDefinitions generated from the Rust types.
//!
//! `crdgen` prints both CRDs as one YAML stream; `crdgen DIR` writes one file per CRD into
//! DIR (`crds/` in this repository, which a test keeps identical to the types).

use std::path::PathBuf;

fn main() {
    let dir = std::env::args_os().nth(1).map(PathBuf::from);
    let crds = tokenbudget::crds::all();
    match dir {
        None => {
            for (_, yaml) in &crds {
                print!("---\n{yaml}");
            }
        }
        Some(dir) => {
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
}
