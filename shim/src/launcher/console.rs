//! Terminal mode: a pty made inside the container (from its own /dev/pts instance, after
//! pivot_root) becomes the init's controlling terminal and stdio; the master goes to the shim
//! over the sync socket.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::pty::{posix_openpt, ptsname_r, unlockpt};

use super::error::{Step, StepResult};

/// Opens the pty, makes the slave fds 0-2 and the controlling terminal (the caller already called
/// setsid), applies `console_size`, and returns the master for the shim. For the container's init
/// (`mount_console`), the slave is also bind-mounted on /dev/console, as runc does.
pub fn setup(size: Option<oci_spec::runtime::Box>, mount_console: bool) -> StepResult<OwnedFd> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .step(|| "console: open /dev/ptmx (is /dev/pts mounted in the container?)".to_string())?;
    unlockpt(&master).step(|| "console: unlockpt".to_string())?;
    let slave_path = ptsname_r(&master).step(|| "console: ptsname".to_string())?;
    let slave = nix::fcntl::open(slave_path.as_str(), OFlag::O_RDWR | OFlag::O_NOCTTY, nix::sys::stat::Mode::empty())
        .step(|| format!("console: open {slave_path}"))?;
    if mount_console {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/dev/console")
            .step(|| "console: create /dev/console".to_string())?;
        nix::mount::mount(
            Some(slave_path.as_str()),
            "/dev/console",
            Some("bind"),
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .step(|| format!("console: bind mount {slave_path} on /dev/console"))?;
    }
    if let Some(size) = size {
        let ws =
            libc::winsize { ws_row: size.height() as u16, ws_col: size.width() as u16, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads a winsize struct that lives for the call.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    for target in 0..=2 {
        nix::unistd::dup2(slave, target).step(|| format!("console: dup2 pty to fd {target}"))?;
    }
    if slave > 2 {
        let _ = nix::unistd::close(slave);
    }
    // SAFETY: TIOCSCTTY on our stdin (the pty slave) with arg 0; we are a session leader.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
        return Err(format!(
            "console: make {slave_path} the controlling terminal: {}",
            std::io::Error::last_os_error()
        )
        .into());
    }
    // SAFETY: the PtyMaster owns this fd; into_raw_fd hands its ownership to the OwnedFd.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(master)) })
}
