//! The cluster's images, made from files of this machine and the Kubernetes build (no
//! registry): the pod sandbox, busybox, the e2e suite's agnhost and a stand-in for the seed
//! guide's `nginx`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use super::PAUSE_IMAGE;
use crate::{
    image::{ImageConfig, RootFs, write_docker_archive},
    kube::KubeBinaries,
};

/// Debian's `busybox-static`.
const BUSYBOX: &str = "/bin/busybox";

/// The image name the 1.20 e2e suite asks for (`test/utils/image/manifest.go`); the tests set
/// no pull policy, so a loaded image with this name is never pulled.
pub const AGNHOST_IMAGE: &str = "k8s.gcr.io/e2e-test-images/agnhost:2.21";

pub const BUSYBOX_IMAGE: &str = "busybox:latest";

/// The seed guide runs `kubectl run nginx --image=nginx`. No registry serves nginx here: this
/// image answers HTTP on port 80 with busybox's httpd under that name, which is all the guide
/// asks of it.
pub const NGINX_IMAGE: &str = "nginx:latest";

/// Writes every image's tarball into `dir` and returns their paths.
pub fn build_all(kube: &KubeBinaries, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut tarballs = Vec::new();

    let mut pause = RootFs::new();
    pause.add_elf_as(&kube.get("pause"), Path::new("/pause"))?;
    tarballs.push(write(dir, "pause", PAUSE_IMAGE, &pause, &["/pause"], &[])?);

    let mut busybox = with_busybox()?;
    tarballs.push(write(
        dir,
        "busybox",
        BUSYBOX_IMAGE,
        &busybox,
        &[],
        &["sh"],
    )?);

    // agnhost as upstream packs it (ENTRYPOINT /agnhost, CMD pause), with a shell: the
    // NetworkPolicy clients run `/bin/sh -c 'for i in $(seq 1 5); do /agnhost connect ...'`.
    let mut agnhost = with_busybox()?;
    agnhost.add_elf_as(&kube.get("agnhost"), Path::new("/agnhost"))?;
    tarballs.push(write(
        dir,
        "agnhost",
        AGNHOST_IMAGE,
        &agnhost,
        &["/agnhost"],
        &["pause"],
    )?);

    busybox.add_bytes(
        Path::new("/usr/share/nginx/html/index.html"),
        b"<h1>Welcome to nginx!</h1>\n<p>(busybox httpd standing in for nginx)</p>\n".to_vec(),
        0o644,
    );
    tarballs.push(write(
        dir,
        "nginx",
        NGINX_IMAGE,
        &busybox,
        &[],
        &["httpd", "-f", "-p", "80", "-h", "/usr/share/nginx/html"],
    )?);
    Ok(tarballs)
}

/// busybox with a link for every applet it has, at the path it lists for it.
fn with_busybox() -> Result<RootFs> {
    let mut rootfs = RootFs::new();
    rootfs.add_elf(Path::new(BUSYBOX))?;
    let list = crate::exec::capture(std::process::Command::new(BUSYBOX).arg("--list-full"))
        .context("listing busybox's applets")?;
    for applet in list.lines().map(str::trim).filter(|line| !line.is_empty()) {
        // `/bin` and `/sbin` are links into `/usr` (merged /usr, as on the host).
        let applet = match applet.split_once('/') {
            Some(("bin" | "sbin", _)) => format!("usr/{applet}"),
            _ => applet.to_owned(),
        };
        let link = Path::new("/").join(applet);
        if link.file_name() == Path::new(BUSYBOX).file_name() {
            continue;
        }
        rootfs.add_symlink(&link, Path::new(BUSYBOX));
    }
    Ok(rootfs)
}

fn write(
    dir: &Path,
    file: &str,
    tag: &str,
    rootfs: &RootFs,
    entrypoint: &[&str],
    cmd: &[&str],
) -> Result<PathBuf> {
    let tarball = dir.join(format!("{file}.tar"));
    let owned = |words: &[&str]| words.iter().map(|word| (*word).to_owned()).collect();
    write_docker_archive(
        &tarball,
        tag,
        rootfs,
        &ImageConfig {
            entrypoint: owned(entrypoint),
            cmd: owned(cmd),
        },
    )?;
    Ok(tarball)
}
