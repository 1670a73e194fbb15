//! Thin safe wrapper over the raw Hyperscan API (`hyperscan-sys`).
//!
//! Only what the engine needs: compile a multi-pattern database (block or
//! stream mode), scratch spaces (one per worker thread or per stream), block
//! scans and streams. Every `unsafe` block is justified by the Hyperscan API
//! contract noted beside it.

use std::ffi::{c_int, c_uint, c_ulonglong, c_void, CStr, CString};
use std::ptr;

use hyperscan_sys as sys;

/// Hyperscan compile or runtime failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HsError {
    /// Index of the expression that failed to compile, if Hyperscan knows it.
    pub expression: Option<usize>,
    /// Hyperscan's message or the numeric error code.
    pub message: String,
}

impl std::fmt::Display for HsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.expression {
            Some(i) => write!(f, "expression #{i}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

fn check(code: sys::hs_error_t, what: &str) -> Result<(), HsError> {
    if code == sys::HS_SUCCESS as sys::hs_error_t {
        Ok(())
    } else {
        Err(HsError {
            expression: None,
            message: format!("{what} failed with Hyperscan error {code}"),
        })
    }
}

/// Database mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Block,
    Stream,
}

/// One expression handed to the compiler.
pub struct Expr<'a> {
    pub pattern: &'a str,
    pub id: u32,
    pub caseless: bool,
}

/// A compiled, immutable Hyperscan database (Send + Sync: Hyperscan databases
/// are read-only after compilation and may be shared between threads).
pub struct Database {
    raw: *mut sys::hs_database_t,
    mode: Mode,
}

// SAFETY: a compiled hs_database_t is immutable and documented as safe to
// share between threads; scratch and stream state are separate objects.
unsafe impl Send for Database {}
unsafe impl Sync for Database {}

impl Drop for Database {
    fn drop(&mut self) {
        // SAFETY: raw came from hs_compile_multi and is freed exactly once.
        unsafe {
            sys::hs_free_database(self.raw);
        }
    }
}

impl Database {
    /// Compile all expressions into one database. An expression Hyperscan
    /// rejects fails the whole build (with its index), never silently.
    pub fn compile(exprs: &[Expr<'_>], mode: Mode) -> Result<Database, HsError> {
        if exprs.is_empty() {
            return Err(HsError {
                expression: None,
                message: "no expressions to compile".into(),
            });
        }
        let mut cstrings = Vec::with_capacity(exprs.len());
        for (i, e) in exprs.iter().enumerate() {
            cstrings.push(CString::new(e.pattern).map_err(|_| HsError {
                expression: Some(i),
                message: "pattern contains a NUL byte".into(),
            })?);
        }
        let ptrs: Vec<*const std::ffi::c_char> = cstrings.iter().map(|c| c.as_ptr()).collect();
        let flags: Vec<c_uint> = exprs
            .iter()
            .map(|e| if e.caseless { sys::HS_FLAG_CASELESS } else { 0 })
            .collect();
        let ids: Vec<c_uint> = exprs.iter().map(|e| e.id).collect();
        let hs_mode = match mode {
            Mode::Block => sys::HS_MODE_BLOCK,
            Mode::Stream => sys::HS_MODE_STREAM,
        };
        let mut db: *mut sys::hs_database_t = ptr::null_mut();
        let mut err: *mut sys::hs_compile_error_t = ptr::null_mut();
        // SAFETY: the three arrays have exprs.len() elements and the C strings
        // outlive the call; db/err are valid out-pointers.
        let rc = unsafe {
            sys::hs_compile_multi(
                ptrs.as_ptr(),
                flags.as_ptr(),
                ids.as_ptr(),
                exprs.len() as c_uint,
                hs_mode,
                ptr::null(),
                &mut db,
                &mut err,
            )
        };
        if rc != sys::HS_SUCCESS as sys::hs_error_t {
            let mut e = HsError {
                expression: None,
                message: format!("compile failed with Hyperscan error {rc}"),
            };
            if !err.is_null() {
                // SAFETY: err is a valid hs_compile_error_t from the compiler;
                // message is a NUL-terminated string owned by it.
                unsafe {
                    let ce = &*err;
                    if !ce.message.is_null() {
                        e.message = CStr::from_ptr(ce.message).to_string_lossy().into_owned();
                    }
                    if ce.expression >= 0 {
                        e.expression = Some(ce.expression as usize);
                    }
                    sys::hs_free_compile_error(err);
                }
            }
            return Err(e);
        }
        Ok(Database { raw: db, mode })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Size of the compiled database in bytes.
    pub fn size(&self) -> usize {
        let mut n = 0usize;
        // SAFETY: raw is a valid database.
        unsafe {
            sys::hs_database_size(self.raw, &mut n);
        }
        n
    }

    /// Allocate a scratch space for this database.
    pub fn alloc_scratch(&self) -> Result<Scratch, HsError> {
        let mut s: *mut sys::hs_scratch_t = ptr::null_mut();
        // SAFETY: raw is valid; s is a valid out-pointer (NULL = allocate).
        check(
            unsafe { sys::hs_alloc_scratch(self.raw, &mut s) },
            "hs_alloc_scratch",
        )?;
        Ok(Scratch { raw: s })
    }

    /// Grow an existing scratch so it also serves this database.
    pub fn grow_scratch(&self, scratch: &mut Scratch) -> Result<(), HsError> {
        // SAFETY: both pointers valid; Hyperscan may reallocate scratch.raw.
        check(
            unsafe { sys::hs_alloc_scratch(self.raw, &mut scratch.raw) },
            "hs_alloc_scratch",
        )
    }

    /// Block-mode scan. `on_match(id, end)` is called for each reported match
    /// end offset; it must not panic.
    pub fn scan<F: FnMut(u32, u64)>(
        &self,
        data: &[u8],
        scratch: &mut Scratch,
        on_match: &mut F,
    ) -> Result<(), HsError> {
        debug_assert_eq!(self.mode, Mode::Block);
        if data.len() > c_uint::MAX as usize {
            return Err(HsError {
                expression: None,
                message: "input larger than 4 GiB".into(),
            });
        }
        let ctx = on_match as *mut F as *mut c_void;
        // SAFETY: data/len valid for the call; the callback trampoline gets
        // ctx back, which points to a live &mut F for the call's duration.
        let rc = unsafe {
            sys::hs_scan(
                self.raw,
                data.as_ptr() as *const std::ffi::c_char,
                data.len() as c_uint,
                0,
                scratch.raw,
                Some(trampoline::<F>),
                ctx,
            )
        };
        check(rc, "hs_scan")
    }

    /// Open a stream on a stream-mode database.
    pub fn open_stream(&self) -> Result<Stream, HsError> {
        debug_assert_eq!(self.mode, Mode::Stream);
        let mut s: *mut sys::hs_stream_t = ptr::null_mut();
        // SAFETY: raw is a valid stream-mode database.
        check(
            unsafe { sys::hs_open_stream(self.raw, 0, &mut s) },
            "hs_open_stream",
        )?;
        Ok(Stream { raw: s })
    }
}

unsafe extern "C" fn trampoline<F: FnMut(u32, u64)>(
    id: c_uint,
    _from: c_ulonglong,
    to: c_ulonglong,
    _flags: c_uint,
    ctx: *mut c_void,
) -> c_int {
    // SAFETY: ctx is the &mut F passed by scan()/Stream::scan() for this call.
    let f = unsafe { &mut *(ctx as *mut F) };
    f(id, to);
    0
}

/// Hyperscan scratch space. One per thread (or per stream); not shareable
/// between concurrent scans, hence Send but not Sync.
pub struct Scratch {
    raw: *mut sys::hs_scratch_t,
}

// SAFETY: a scratch may move between threads; it is used by one scan at a time
// (enforced by &mut).
unsafe impl Send for Scratch {}

impl Scratch {
    /// Clone this scratch (cheaper than allocating from the database).
    pub fn try_clone(&self) -> Result<Scratch, HsError> {
        let mut s: *mut sys::hs_scratch_t = ptr::null_mut();
        // SAFETY: self.raw is valid; s is an out-pointer.
        check(
            unsafe { sys::hs_clone_scratch(self.raw, &mut s) },
            "hs_clone_scratch",
        )?;
        Ok(Scratch { raw: s })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // SAFETY: raw came from hs_alloc/clone_scratch; freed once.
        unsafe {
            sys::hs_free_scratch(self.raw);
        }
    }
}

/// Open Hyperscan stream state.
pub struct Stream {
    raw: *mut sys::hs_stream_t,
}

// SAFETY: stream state is plain memory owned by this value.
unsafe impl Send for Stream {}

impl Stream {
    /// Scan the next piece of the stream. Reported end offsets are absolute
    /// stream offsets.
    pub fn scan<F: FnMut(u32, u64)>(
        &mut self,
        data: &[u8],
        scratch: &mut Scratch,
        on_match: &mut F,
    ) -> Result<(), HsError> {
        let mut off = 0usize;
        // Feed in pieces below the c_uint limit.
        while off < data.len() || data.is_empty() {
            let end = (off + (c_uint::MAX as usize)).min(data.len());
            let piece = &data[off..end];
            let ctx = on_match as *mut F as *mut c_void;
            // SAFETY: as in Database::scan; self.raw is an open stream.
            let rc = unsafe {
                sys::hs_scan_stream(
                    self.raw,
                    piece.as_ptr() as *const std::ffi::c_char,
                    piece.len() as c_uint,
                    0,
                    scratch.raw,
                    Some(trampoline::<F>),
                    ctx,
                )
            };
            check(rc, "hs_scan_stream")?;
            off = end;
            if data.is_empty() {
                break;
            }
        }
        Ok(())
    }

    /// Close the stream, reporting matches that needed end-of-data (`$`, `\b`).
    pub fn close<F: FnMut(u32, u64)>(
        mut self,
        scratch: &mut Scratch,
        on_match: &mut F,
    ) -> Result<(), HsError> {
        let raw = std::mem::replace(&mut self.raw, ptr::null_mut());
        let ctx = on_match as *mut F as *mut c_void;
        // SAFETY: raw is an open stream, closed exactly once here.
        let rc = unsafe { sys::hs_close_stream(raw, scratch.raw, Some(trampoline::<F>), ctx) };
        check(rc, "hs_close_stream")
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if !self.raw.is_null() {
            // SAFETY: an open stream not yet closed; no callback wanted.
            unsafe {
                sys::hs_close_stream(self.raw, ptr::null_mut(), None, ptr::null_mut());
            }
        }
    }
}
