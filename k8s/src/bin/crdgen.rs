//! Writes the CRDs to crds/ (or prints them with `--stdout`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let stdout = std::env::args().any(|a| a == "--stdout");
    for (file, yaml) in kubekms_k8s::crds_yaml()? {
        if stdout {
            print!("---\n{yaml}");
        } else {
            std::fs::create_dir_all(&out_dir)?;
            std::fs::write(out_dir.join(&file), yaml)?;
            eprintln!("wrote crds/{file}");
        }
    }
    Ok(())
}
