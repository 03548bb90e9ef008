//! The image commands of the CLI: build, sign, list, rm, gc, cat-manifest,
//! export, verify.

use stage0::archive::{Compression, Limits};
use stage0::build::{self, BuildOptions};
use stage0::exit::{Exit, ExitCodeOf};
use stage0::keys;
use stage0::oci::registry::ClientOptions;
use stage0::oci::sign::{SignTarget, Signer};
use stage0::oci::sigstore;
use stage0::paths::Dirs;
use stage0::render;
use stage0::store::Store;

use crate::{fail, print_table, CompressionArg, Failed, Format, ImageCmd};

pub(crate) fn image(dirs: &Dirs, cmd: ImageCmd) -> Result<(), Failed> {
    match cmd {
        ImageCmd::Build { recipe, output, compression, cache_dir, source_date_epoch } => {
            let opts = BuildOptions {
                cache_dir,
                compression: match compression {
                    CompressionArg::Zstd => Compression::Zstd,
                    CompressionArg::Gzip => Compression::Gzip,
                    CompressionArg::None => Compression::None,
                },
                source_date_epoch,
                ..BuildOptions::default()
            };
            let report = build::build(&recipe, &output, &opts)?;
            eprintln!(
                "built {} ({}, {} Debian packages) -> {}",
                report.manifest.name,
                human_size(report.size),
                report.packages.len(),
                output.display()
            );
            println!("{}", report.id);
            return Ok(());
        }
        ImageCmd::Sign { key, ca_cert, insecure_options, authfile, images } => {
            let (mut files, mut registry) = (Vec::new(), Vec::new());
            for target in images {
                match target {
                    SignTarget::Aci(f) => files.push(f),
                    SignTarget::Registry(r) => registry.push(r),
                }
            }
            if !files.is_empty() && !registry.is_empty() {
                let why = "one --key signs either ACI files (a pod key) or docker:// images (a cosign key), not both";
                return Err(fail(Exit::Usage, why.into()));
            }
            if insecure_options.image {
                return Err(fail(Exit::Usage, "--insecure-options for signing takes only http".into()));
            }
            if registry.is_empty() {
                let secret = keys::load_secret(&key)?;
                for img in files {
                    let sig = keys::sign_file(&secret, &img)?;
                    eprintln!("wrote {}", sig.display());
                }
                return Ok(());
            }
            let client = ClientOptions {
                plain_http: insecure_options.http,
                ca_certs: ca_cert,
                auth_file: authfile,
                ..ClientOptions::default()
            };
            let names = registry.iter().map(|r| format!("docker://{r}")).collect::<Vec<_>>().join(", ");
            let signer = sigstore::password(std::env::var_os(sigstore::PASSWORD_ENV), false)
                .and_then(|pw| Signer::load(&key, &pw, client))
                .map_err(|e| fail(e.exit(), format!("not signing {names}: {e}")))?;
            for r in &registry {
                let signed = signer.sign(r)?;
                println!("{}", signed.digest);
                let how = if signed.added { "pushed" } else { "already there, nothing pushed" };
                eprintln!(
                    "signed docker://{} ({}) with key {}: {}:{} {how}",
                    signed.image,
                    signed.digest,
                    signer.key_id(),
                    r.name(),
                    signed.signature_tag
                );
            }
            return Ok(());
        }
        _ => {}
    }
    let store = Store::open(dirs)?;
    match cmd {
        ImageCmd::List { format } => {
            let list = store.list()?;
            match format {
                Format::Json => {
                    let v: Vec<_> = list
                        .iter()
                        .map(|m| {
                            serde_json::json!({
                                "id": m.id, "name": m.name, "labels": m.labels, "size": m.size,
                                "uncompressedSize": m.uncompressed_size, "signer": m.signer,
                                "importedAt": m.imported_at, "source": m.source,
                                "kind": if m.oci.is_some() { "oci" } else { "aci" },
                                "digest": m.oci.as_ref().map(|o| &o.digest),
                                "signature": m.oci.as_ref().and_then(|o| o.signature.as_ref()),
                                "layers": m.oci.as_ref().map(|o| o.layers.iter().map(|l| &l.digest).collect::<Vec<_>>()),
                            })
                        })
                        .collect();
                    println!("{}", serde_json::Value::Array(v));
                }
                Format::Table => {
                    let mut out = String::from("ID\tNAME\tVERSION\tSIZE\tSIGNER\tIMPORTED\tSOURCE\n");
                    for m in &list {
                        let signer = match (&m.signer, m.oci.as_ref().and_then(|o| o.signature.as_deref())) {
                            (None, _) => "INSECURE (unverified)".to_owned(),
                            (Some(k), Some(how)) => format!("{} ({how})", k.get(..16).unwrap_or(k)),
                            (Some(k), None) => k.get(..16).unwrap_or(k).to_owned(),
                        };
                        out.push_str(&format!(
                            "{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                            m.id.short(),
                            m.name,
                            m.labels.get("version").map_or("-", String::as_str),
                            human_size(m.uncompressed_size),
                            signer,
                            m.imported_at,
                            m.source,
                        ));
                    }
                    print_table(&out);
                }
            }
        }
        ImageCmd::Rm { images } => {
            for q in images {
                let meta = store.lookup(&q)?;
                // Running pods' rootfs sit on the image's files: refuse, as
                // podman does for images in use.
                let users = stage0::lifecycle::pods_using(&stage0::pods::Pods::new(dirs), &meta.id)?;
                if !users.is_empty() {
                    return Err(fail(
                        Exit::Conflict,
                        format!("image {} is used by pod {}", meta.name, users.join(", ")),
                    ));
                }
                store.remove(&meta.id)?;
                println!("{}", meta.id);
            }
        }
        ImageCmd::Gc => {
            let _lock = store.lock_exclusive()?;
            for name in store.gc_tmp()? {
                eprintln!("removed leftover {name}");
            }
            let removed = render::gc_trees(dirs, |layers| {
                layers.iter().all(|id| store.image_dir(id).join("meta.json").is_file())
            })?;
            for key in removed {
                eprintln!("removed tree {key}");
            }
            let oci: Vec<_> = store.list()?.into_iter().filter_map(|m| m.oci).collect();
            for digest in stage0::oci::store::gc(dirs, &oci)? {
                eprintln!("removed blob {digest}");
            }
        }
        ImageCmd::CatManifest { image } => {
            let meta = store.lookup(&image)?;
            if meta.oci.is_some() {
                let path = store.image_dir(&meta.id).join(stage0::oci::store::MANIFEST_FILE);
                let bytes =
                    std::fs::read(&path).map_err(|e| fail(Exit::Failure, format!("read {}: {e}", path.display())))?;
                println!("{}", String::from_utf8_lossy(&bytes));
                return Ok(());
            }
            let manifest = store.manifest(&meta.id)?;
            println!("{}", String::from_utf8_lossy(&manifest.to_json()));
        }
        ImageCmd::Export { image, out } => {
            let meta = store.lookup(&image)?;
            if meta.oci.is_some() {
                stage0::oci::export::export(&store, &meta.id, &out)?;
                println!("{}", meta.id);
                return Ok(());
            }
            let dir = store.image_dir(&meta.id);
            std::fs::copy(dir.join("image.aci"), &out)
                .map_err(|e| fail(Exit::Failure, format!("export to {}: {e}", out.display())))?;
            let sig = dir.join("image.aci.sig");
            if sig.is_file() {
                let mut sig_out = out.clone().into_os_string();
                sig_out.push(".sig");
                std::fs::copy(&sig, &sig_out).map_err(|e| fail(Exit::Failure, format!("export signature: {e}")))?;
            }
            println!("{}", meta.id);
        }
        ImageCmd::Verify { images } => {
            let metas = if images.is_empty() {
                store.list()?
            } else {
                images.iter().map(|q| store.lookup(q)).collect::<Result<_, _>>()?
            };
            let mut bad = 0;
            for m in &metas {
                match store.verify(&m.id, &Limits { max_uncompressed: u64::MAX, max_entries: u64::MAX }) {
                    Ok(_) => println!("ok\t{}\t{}", m.id.short(), m.name),
                    Err(e) => {
                        bad += 1;
                        println!("CORRUPT\t{}\t{}\t{e}", m.id.short(), m.name);
                    }
                }
            }
            if bad > 0 {
                return Err(fail(Exit::Failure, format!("{bad} of {} images failed verification", metas.len())));
            }
        }
        ImageCmd::Build { .. } | ImageCmd::Sign { .. } => {}
    }
    Ok(())
}

fn human_size(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}
