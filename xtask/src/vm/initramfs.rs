//! The guests' initramfs: an uncompressed newc cpio archive written here (no cpio tool).
//!
//! Layout, as `tests/src/bin/vm-init.rs` expects it:
//! - `/init`: the Rust init;
//! - `/tests/<file>`: the test binaries;
//! - the shared libraries and the dynamic loader of both, at the paths `ldd` reports;
//! - `/modules/<name>.ko` and `/modules/order` (dependencies first);
//! - `/bin/busybox` and `/bin/sh`, for poking around when a guest misbehaves;
//! - `/dev/console`, so init starts with a console before devtmpfs is mounted.
//!
//! Uncompressed on purpose: the kernel unpacks it faster than it would decompress it under
//! TCG, and writing it takes no time.

use std::{
    collections::BTreeSet,
    fs,
    io::{self, BufWriter, Read as _, Write},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::kernel::Module;

/// Where busybox-static installs its binary.
const BUSYBOX: &str = "/bin/busybox";

/// What goes into an initramfs.
pub struct Contents<'a> {
    pub init: &'a Path,
    pub tests: &'a [PathBuf],
    pub modules: &'a [Module],
}

/// Writes the initramfs for `contents` to `path` (through a temporary file, so a concurrent
/// run never boots a half-written archive).
pub fn write(path: &Path, contents: &Contents<'_>) -> Result<()> {
    let partial = path.with_extension(format!("partial-{}", std::process::id()));
    let written = write_to(&partial, contents).and_then(|()| {
        fs::rename(&partial, path)
            .with_context(|| format!("renaming {} to {}", partial.display(), path.display()))
    });
    if written.is_err() {
        let _ = fs::remove_file(&partial);
    }
    written
}

fn write_to(path: &Path, contents: &Contents<'_>) -> Result<()> {
    let &Contents {
        init,
        tests,
        modules,
    } = contents;
    let mut libraries = BTreeSet::new();
    for binary in std::iter::once(init).chain(tests.iter().map(PathBuf::as_path)) {
        libraries.extend(shared_libraries(binary)?);
    }
    let busybox = Path::new(BUSYBOX);
    if !busybox.is_file() {
        bail!("{BUSYBOX} is missing: install busybox-static (`cargo xtask setup`)");
    }

    let file = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut cpio = Cpio::new(BufWriter::new(file));
    let context = || format!("writing {}", path.display());
    cpio.char_device("dev/console", 0o600, 5, 1)
        .with_context(context)?;
    cpio.file("init", 0o755, init)?;
    cpio.file("bin/busybox", 0o755, busybox)?;
    cpio.symlink("bin/sh", "busybox").with_context(context)?;
    for library in &libraries {
        let name = library
            .to_str()
            .with_context(|| format!("non-UTF-8 library path {}", library.display()))?;
        cpio.file(name, 0o755, library)?;
    }
    cpio.dir("tests").with_context(context)?;
    for test in tests {
        let name = test
            .file_name()
            .and_then(|name| name.to_str())
            .with_context(|| format!("odd test binary path {}", test.display()))?;
        // Debug info is most of a test binary (~200 MB): without it the archive fits the
        // guest's RAM-backed root file system.
        let stripped = strip_debug(test, path)?;
        cpio.file(&format!("tests/{name}"), 0o755, &stripped)?;
    }
    cpio.dir("modules").with_context(context)?;
    let mut order = String::new();
    for module in modules {
        let name = format!("{}.ko", module.name);
        cpio.bytes(&format!("modules/{name}"), 0o644, &module.data)
            .with_context(context)?;
        order.push_str(&name);
        order.push('\n');
    }
    cpio.bytes("modules/order", 0o644, order.as_bytes())
        .with_context(context)?;
    cpio.finish()
        .and_then(|mut out| out.flush())
        .with_context(context)?;
    Ok(())
}

/// The absolute paths of the shared libraries and loader `binary` needs (empty if static).
/// A copy of `binary` without debug sections, next to the archive being written.
fn strip_debug(binary: &Path, archive: &Path) -> Result<PathBuf> {
    let name = binary
        .file_name()
        .with_context(|| format!("odd test binary path {}", binary.display()))?;
    let stripped = archive.with_file_name(name).with_extension("stripped");
    let status = std::process::Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&stripped)
        .arg(binary)
        .status()
        .context("running strip (binutils)")?;
    anyhow::ensure!(
        status.success(),
        "strip --strip-debug {} failed: {status}",
        binary.display()
    );
    Ok(stripped)
}

fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .with_context(|| format!("running ldd {}", binary.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        if stdout.contains("not a dynamic executable")
            || String::from_utf8_lossy(&output.stderr).contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {} failed: {}\n{}",
            binary.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_ldd(&stdout).with_context(|| format!("ldd {}", binary.display()))
}

/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and `/lib64/ld-linux-x86-64.so.2
/// (0x...)` give paths; the vDSO has none.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
        let target = match line.split_once("=>") {
            Some((_, target)) => target.trim(),
            None => line,
        };
        if target.starts_with("not found") {
            bail!("a library is missing: {line}");
        }
        let path = target.split_whitespace().next().unwrap_or("");
        if path.starts_with('/') {
            paths.push(PathBuf::from(path));
        }
    }
    Ok(paths)
}

/// A newc ("070701") cpio writer: the format the kernel unpacks into its rootfs.
struct Cpio<W> {
    out: W,
    next_inode: u32,
    dirs: BTreeSet<String>,
}

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

impl<W: Write> Cpio<W> {
    fn new(out: W) -> Self {
        Cpio {
            out,
            next_inode: 1,
            dirs: BTreeSet::new(),
        }
    }

    /// A directory, and its parents first (the kernel does not create missing parents).
    fn dir(&mut self, path: &str) -> io::Result<()> {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return Ok(());
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent)?;
        }
        self.header(path, S_IFDIR | 0o755, 0, (0, 0))?;
        self.dirs.insert(path.to_owned());
        Ok(())
    }

    fn parent_of(&mut self, path: &str) -> io::Result<()> {
        match path.trim_matches('/').rsplit_once('/') {
            Some((parent, _)) => self.dir(parent),
            None => Ok(()),
        }
    }

    /// A regular file at `path` with the content of `source` (symlinks followed).
    fn file(&mut self, path: &str, mode: u32, source: &Path) -> Result<()> {
        let mut input =
            fs::File::open(source).with_context(|| format!("opening {}", source.display()))?;
        let size = input
            .metadata()
            .with_context(|| format!("reading the size of {}", source.display()))?
            .len();
        let size = u32::try_from(size)
            .with_context(|| format!("{} is too big for a cpio archive", source.display()))?;
        let mut write = |cpio: &mut Self| -> io::Result<()> {
            cpio.parent_of(path)?;
            cpio.header(path, S_IFREG | mode, size, (0, 0))?;
            let copied = io::copy(&mut (&mut input).take(u64::from(size)), &mut cpio.out)?;
            if copied != u64::from(size) {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file shrank while it was copied",
                ));
            }
            cpio.pad(size as usize)
        };
        write(self).with_context(|| format!("adding {} as /{path}", source.display()))
    }

    fn bytes(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.parent_of(path)?;
        self.header(path, S_IFREG | mode, len32(data)?, (0, 0))?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.parent_of(path)?;
        self.header(path, S_IFLNK | 0o777, len32(target.as_bytes())?, (0, 0))?;
        self.out.write_all(target.as_bytes())?;
        self.pad(target.len())
    }

    fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        self.parent_of(path)?;
        self.header(path, S_IFCHR | mode, 0, (major, minor))
    }

    /// The trailer entry; returns the writer.
    fn finish(mut self) -> io::Result<W> {
        self.raw_header("TRAILER!!!", 0, 0, 0, 1, (0, 0))?;
        Ok(self.out)
    }

    fn header(&mut self, path: &str, mode: u32, size: u32, rdev: (u32, u32)) -> io::Result<()> {
        let inode = self.next_inode;
        self.next_inode += 1;
        let nlink = if mode & S_IFDIR == S_IFDIR { 2 } else { 1 };
        self.raw_header(path.trim_start_matches('/'), inode, mode, size, nlink, rdev)
    }

    /// 110 bytes of header (magic and 13 eight-digit hex fields), the NUL-terminated name,
    /// padding to four bytes.
    fn raw_header(
        &mut self,
        name: &str,
        inode: u32,
        mode: u32,
        size: u32,
        nlink: u32,
        (rdev_major, rdev_minor): (u32, u32),
    ) -> io::Result<()> {
        let name_size = len32(name.as_bytes())? + 1;
        // Named for the reader; the format is these thirteen in this order.
        let fields = [
            ("ino", inode),
            ("mode", mode),
            ("uid", 0),
            ("gid", 0),
            ("nlink", nlink),
            ("mtime", 0), // fixed, so archives are reproducible
            ("filesize", size),
            ("devmajor", 0),
            ("devminor", 0),
            ("rdevmajor", rdev_major),
            ("rdevminor", rdev_minor),
            ("namesize", name_size),
            ("check", 0),
        ];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for (_, value) in fields {
            header.push_str(&format!("{value:08x}"));
        }
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(110 + name_size as usize)
    }

    fn pad(&mut self, written: usize) -> io::Result<()> {
        let padding = (4 - written % 4) % 4;
        self.out.write_all(&[0; 3][..padding])
    }
}

fn len32(data: &[u8]) -> io::Result<u32> {
    u32::try_from(data.len()).map_err(|_| io::Error::other("entry too big for a cpio archive"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_have_newc_headers_padded_to_four_bytes() {
        let mut cpio = Cpio::new(Vec::new());
        cpio.bytes("a/b", 0o644, b"hello").expect("write");
        let out = cpio.finish().expect("finish");
        // The parent directory comes first, then the file, then the trailer.
        assert_eq!(&out[..6], b"070701");
        assert_eq!(&out[110..112], b"a\0");
        // Header 110 + "a\0" = 112: already aligned; the file header follows.
        let file = &out[112..];
        assert_eq!(&file[..6], b"070701");
        let field = |entry: &[u8], index: usize| {
            let start = 6 + index * 8;
            u32::from_str_radix(
                std::str::from_utf8(&entry[start..start + 8]).expect("hex"),
                16,
            )
            .expect("hex")
        };
        assert_eq!(field(file, 1), S_IFREG | 0o644, "mode");
        assert_eq!(field(file, 6), 5, "size");
        assert_eq!(field(file, 11), 4, "name size with its NUL");
        // 110 + 4 = 114, padded to 116; then 5 data bytes padded to 8.
        assert_eq!(&file[110..114], b"a/b\0");
        assert_eq!(&file[116..121], b"hello");
        assert_eq!(&file[121..124], &[0, 0, 0]);
        let trailer = &file[124..];
        assert_eq!(&trailer[110..121], b"TRAILER!!!\0");
        assert_eq!(trailer.len() % 4, 0);
        assert_eq!(out.len() % 4, 0);
    }

    #[test]
    fn ldd_output_gives_library_and_loader_paths() {
        let text = "\
\tlinux-vdso.so.1 (0x00007ffd)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f12)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f12)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f12)
";
        assert_eq!(
            parse_ldd(text).expect("parse"),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tlibfoo.so => not found\n").is_err());
    }
}
