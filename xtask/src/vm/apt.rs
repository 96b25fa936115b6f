//! Debian packages through apt: the machine's own configuration for its own suites, and a
//! private configuration for the older suite (bullseye, kernel 5.10).
//!
//! The private configuration has its own sources list, state, lists and cache directories,
//! so the machine's apt state is never touched. Its mirror is not written down anywhere in
//! the project: it is the machine's own Debian mirror (and security mirror), read from
//! `/etc/apt/sources.list{,.d}`, with the suite swapped.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, bail};

use crate::exec;

/// The Debian suite that still ships 5.10 kernels.
pub const OLD_SUITE: &str = "bullseye";

/// Private package lists older than this are refreshed (when the mirror answers).
const LISTS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Which apt configuration a command uses.
pub enum Apt {
    /// The machine's own configuration (its release's suites).
    Host,
    /// A private configuration rooted at `root`.
    Private { root: PathBuf },
}

impl Apt {
    /// The private configuration for [`OLD_SUITE`] under `root`, with lists fetched if there
    /// are none yet or they are stale.
    pub fn old_suite(root: &Path) -> Result<Self> {
        let mirrors = host_mirrors().context(
            "cannot derive a Debian mirror from the machine's apt sources for the bullseye suite",
        )?;
        for dir in [
            "etc/sources.list.d",
            "etc/preferences.d",
            "state/lists/partial",
            "cache/archives/partial",
        ] {
            let dir = root.join(dir);
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let status = root.join("state/status");
        if !status.exists() {
            fs::write(&status, "").with_context(|| format!("creating {}", status.display()))?;
        }
        let sources = root.join("etc/sources.list");
        let text = mirrors.sources_list(OLD_SUITE);
        if fs::read_to_string(&sources).ok().as_deref() != Some(text.as_str()) {
            fs::write(&sources, &text).with_context(|| format!("writing {}", sources.display()))?;
        }
        let apt = Apt::Private {
            root: root.to_path_buf(),
        };
        match lists_age(&root.join("state/lists")) {
            None => apt.refresh()?,
            Some(age) if age > LISTS_MAX_AGE => {
                if let Err(error) = apt.refresh() {
                    eprintln!("vm: keeping the old {OLD_SUITE} package lists: {error:#}");
                }
            }
            Some(_) => {}
        }
        Ok(apt)
    }

    /// `apt-get` or `apt-cache` with this configuration.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        // Downloads land in the project cache under root's home, which the `_apt` sandbox
        // user cannot write to; apt would fall back to root anyway, with a warning.
        cmd.args(["-o", "APT::Sandbox::User=root"]);
        // Bounded waits: a mirror that stops answering fails the run instead of hanging it.
        for option in [
            "Acquire::http::Timeout=60",
            "Acquire::https::Timeout=60",
            "Acquire::Retries=2",
        ] {
            cmd.args(["-o", option]);
        }
        if let Apt::Private { root } = self {
            let option = |name: &str, path: &str| format!("{name}={}", root.join(path).display());
            for (name, path) in [
                ("Dir::Etc::SourceList", "etc/sources.list"),
                ("Dir::Etc::SourceParts", "etc/sources.list.d"),
                ("Dir::Etc::Preferences", "etc/preferences"),
                ("Dir::Etc::PreferencesParts", "etc/preferences.d"),
                ("Dir::State", "state"),
                ("Dir::State::Lists", "state/lists"),
                ("Dir::State::status", "state/status"),
                ("Dir::Cache", "cache"),
            ] {
                cmd.arg("-o").arg(option(name, path));
            }
            // Only package indexes are needed: no translations.
            cmd.args(["-o", "Acquire::Languages=none"]);
        }
        cmd
    }

    fn describe(&self) -> String {
        match self {
            Apt::Host => "the machine's apt sources".to_owned(),
            Apt::Private { root } => {
                format!(
                    "the private {OLD_SUITE} apt configuration in {}",
                    root.display()
                )
            }
        }
    }

    /// Fetches fresh package lists (`apt-get update`).
    pub fn refresh(&self) -> Result<()> {
        exec::run(self.command("apt-get").args(["update", "-q"]))
            .with_context(|| format!("apt-get update failed for {}", self.describe()))
    }

    /// Package names matching the regular expression `pattern`.
    pub fn search(&self, pattern: &str) -> Result<Vec<String>> {
        let out = exec::capture(
            self.command("apt-cache")
                .args(["search", "--names-only"])
                .arg(pattern),
        )
        .with_context(|| format!("apt-cache search {pattern} in {}", self.describe()))?;
        Ok(out
            .lines()
            .filter_map(|line| line.split(" - ").next())
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .collect())
    }

    /// Downloads `package` into the empty directory `dir` and returns the `.deb`.
    pub fn download(&self, package: &str, dir: &Path) -> Result<PathBuf> {
        exec::run(
            self.command("apt-get")
                .args(["download", "-q", package])
                .current_dir(dir),
        )
        .with_context(|| format!("downloading {package} with {}", self.describe()))?;
        let prefix = format!("{package}_");
        fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.path())
            .find(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with(&prefix) && name.ends_with(".deb"))
            })
            .with_context(|| {
                format!(
                    "apt-get download left no {package}_*.deb in {}",
                    dir.display()
                )
            })
    }
}

/// Age of the newest package index in `lists`, or `None` when there is none.
fn lists_age(lists: &Path) -> Option<Duration> {
    fs::read_dir(lists)
        .ok()?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().contains("_Packages"))
        .filter_map(|entry| entry.metadata().ok()?.modified().ok())
        .max()
        .map(|newest| {
            SystemTime::now()
                .duration_since(newest)
                .unwrap_or(Duration::ZERO)
        })
}

/// One `deb` source: where from, which suites, which keyring.
#[derive(Debug, PartialEq)]
struct Source {
    uris: Vec<String>,
    suites: Vec<String>,
    signed_by: Option<String>,
}

/// The machine's Debian mirrors: the archive and (if configured) the security archive.
#[derive(Debug, PartialEq)]
struct Mirrors {
    archive: (String, Option<String>),
    security: Option<(String, Option<String>)>,
}

impl Mirrors {
    /// A one-line-format sources list for `suite` (and `<suite>-security`).
    fn sources_list(&self, suite: &str) -> String {
        let line = |(uri, signed_by): &(String, Option<String>), suite: &str| match signed_by {
            Some(keyring) => format!("deb [signed-by={keyring}] {uri} {suite} main\n"),
            None => format!("deb {uri} {suite} main\n"),
        };
        let mut text = String::from("# Written by `cargo xtask vm` from the machine's sources.\n");
        text.push_str(&line(&self.archive, suite));
        if let Some(security) = &self.security {
            text.push_str(&line(security, &format!("{suite}-security")));
        }
        text
    }
}

/// Reads the machine's apt sources and picks the Debian mirrors of its own release.
fn host_mirrors() -> Result<Mirrors> {
    let os_release = fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    let codename = os_release
        .lines()
        .find_map(|line| line.strip_prefix("VERSION_CODENAME="))
        .map(|value| value.trim().trim_matches('"').to_owned())
        .filter(|value| !value.is_empty())
        .context("/etc/os-release has no VERSION_CODENAME")?;
    let mut sources = Vec::new();
    let list = Path::new("/etc/apt/sources.list");
    if list.exists() {
        let text =
            fs::read_to_string(list).with_context(|| format!("reading {}", list.display()))?;
        sources.extend(parse_one_line(&text));
    }
    let parts = Path::new("/etc/apt/sources.list.d");
    if parts.is_dir() {
        let mut files: Vec<PathBuf> = fs::read_dir(parts)
            .with_context(|| format!("reading {}", parts.display()))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .collect();
        files.sort();
        for file in files {
            let parse = match file.extension().and_then(|ext| ext.to_str()) {
                Some("sources") => parse_deb822,
                Some("list") => parse_one_line,
                _ => continue,
            };
            let text =
                fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            sources.extend(parse(&text));
        }
    }
    pick_mirrors(&sources, &codename)
}

/// The first source carrying suite `codename` is the archive; the first carrying
/// `<codename>-security` is the security archive.
fn pick_mirrors(sources: &[Source], codename: &str) -> Result<Mirrors> {
    let find = |suite: &str| {
        sources.iter().find_map(|source| {
            let uri = source.uris.first()?;
            source.suites.iter().any(|s| s == suite).then(|| {
                (
                    uri.trim_end_matches('/').to_owned(),
                    source.signed_by.clone(),
                )
            })
        })
    };
    let Some(archive) = find(codename) else {
        bail!(
            "no apt source for suite {codename} in /etc/apt/sources.list or \
             /etc/apt/sources.list.d/*.{{list,sources}}"
        );
    };
    Ok(Mirrors {
        archive,
        security: find(&format!("{codename}-security")),
    })
}

/// deb822 `.sources` paragraphs of type `deb` that are not disabled.
fn parse_deb822(text: &str) -> Vec<Source> {
    let mut paragraphs: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for line in text.lines() {
        if line.trim().is_empty() {
            paragraphs.push(Vec::new());
            continue;
        }
        if line.trim_start().starts_with('#') {
            continue;
        }
        let Some(fields) = paragraphs.last_mut() else {
            continue;
        };
        if line.starts_with([' ', '\t']) {
            // A continuation line (e.g. an inline keyring): it belongs to the last field.
            if let Some((_, value)) = fields.last_mut() {
                value.push('\n');
                value.push_str(line.trim());
            }
        } else if let Some((key, value)) = line.split_once(':') {
            fields.push((key.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    paragraphs
        .iter()
        .filter_map(|fields| deb822_source(fields))
        .collect()
}

fn deb822_source(fields: &[(String, String)]) -> Option<Source> {
    let field = |name: &str| {
        fields
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    let words = |name: &str| -> Vec<String> {
        field(name)
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let enabled = field("enabled").is_none_or(|value| !value.eq_ignore_ascii_case("no"));
    if !enabled || !words("types").iter().any(|t| t == "deb") {
        return None;
    }
    // An inline keyring (several lines) cannot be passed on as a path: apt then uses its
    // trusted keyrings instead.
    let signed_by = field("signed-by")
        .filter(|value| !value.contains('\n'))
        .map(str::to_owned);
    Some(Source {
        uris: words("uris"),
        suites: words("suites"),
        signed_by,
    })
}

/// One-line `deb [options] uri suite components...` entries.
fn parse_one_line(text: &str) -> Vec<Source> {
    let mut sources = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let mut rest = rest.trim_start();
        let mut signed_by = None;
        if let Some(options) = rest.strip_prefix('[') {
            let Some((options, after)) = options.split_once(']') else {
                continue;
            };
            signed_by = options
                .split_whitespace()
                .find_map(|option| option.strip_prefix("signed-by="))
                .map(str::to_owned);
            rest = after.trim_start();
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        sources.push(Source {
            uris: vec![uri.to_owned()],
            suites: vec![suite.to_owned()],
            signed_by,
        });
    }
    sources
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "\
Types: deb
# a comment
URIs: http://mirror.example.invalid/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://src.example.invalid/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://disabled.example.invalid/debian
Suites: bookworm
Enabled: no

Types: deb
URIs: http://security.example.invalid/debian-security/
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

    #[test]
    fn deb822_sources_give_the_archive_and_security_mirrors() {
        let sources = parse_deb822(DEB822);
        assert_eq!(
            sources.len(),
            2,
            "deb-src and disabled entries are left out"
        );
        let mirrors = pick_mirrors(&sources, "bookworm").expect("mirrors");
        let keyring = Some("/usr/share/keyrings/debian-archive-keyring.gpg".to_owned());
        assert_eq!(
            mirrors,
            Mirrors {
                archive: (
                    "http://mirror.example.invalid/debian".to_owned(),
                    keyring.clone()
                ),
                security: Some((
                    "http://security.example.invalid/debian-security".to_owned(),
                    keyring
                )),
            }
        );
        assert_eq!(
            mirrors.sources_list("bullseye"),
            "# Written by `cargo xtask vm` from the machine's sources.\n\
             deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
             http://mirror.example.invalid/debian bullseye main\n\
             deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
             http://security.example.invalid/debian-security bullseye-security main\n"
        );
    }

    #[test]
    fn one_line_sources_are_read_with_their_options() {
        let text = "\
# deb http://commented.example.invalid/debian bookworm main
deb [arch=amd64 signed-by=/k.gpg] http://mirror.example.invalid/debian bookworm main
deb-src http://mirror.example.invalid/debian bookworm main
deb http://mirror.example.invalid/debian-security bookworm-security main # trailing
";
        let sources = parse_one_line(text);
        let mirrors = pick_mirrors(&sources, "bookworm").expect("mirrors");
        assert_eq!(
            mirrors.archive,
            (
                "http://mirror.example.invalid/debian".to_owned(),
                Some("/k.gpg".to_owned())
            )
        );
        assert_eq!(
            mirrors.security,
            Some((
                "http://mirror.example.invalid/debian-security".to_owned(),
                None
            ))
        );
    }

    #[test]
    fn a_machine_without_its_own_suite_is_an_error() {
        let sources = parse_one_line("deb http://mirror.example.invalid/debian trixie main\n");
        assert!(pick_mirrors(&sources, "bookworm").is_err());
    }
}
