//! Lower OS priority for threads doing bulk work (job validation, key generation), so that the
//! API's threads (status polls above all) are scheduled first when every core is busy.

/// `nice` of such threads: below the API's.
pub const BACKGROUND_NICE: i32 = 10;

/// Lower the calling thread's priority to `BACKGROUND_NICE`.
#[cfg(target_os = "linux")]
pub fn lower() {
    // With PRIO_PROCESS and who = 0, Linux changes the calling thread only.
    // SAFETY: setpriority has no memory effects; a failure just leaves the priority as it was.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, BACKGROUND_NICE) };
}

#[cfg(not(target_os = "linux"))]
pub fn lower() {}
