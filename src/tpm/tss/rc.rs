//! The one place TPM response codes and TCTI failures are classified into `TpmError`.

use tss_esapi::constants::response_code::Tss2ResponseCodeKind as Rc;

use crate::tpm::TpmError;

pub(super) fn kind(e: &tss_esapi::Error) -> Option<Rc> {
    match e {
        tss_esapi::Error::Tss2Error(rc) => rc.kind(),
        tss_esapi::Error::WrapperError(_) => None,
    }
}

/// The raw TSS2_RC of an error from the TSS itself (not the TPM), which tss-esapi only shows
/// in its text ("Response code value: 0x…").
pub(super) fn raw_code(e: &tss_esapi::Error) -> Option<u32> {
    use tss_esapi::constants::response_code::Tss2ResponseCode;
    let tss_esapi::Error::Tss2Error(Tss2ResponseCode::FormatZero(rc)) = e else {
        return None;
    };
    let text = rc.to_string();
    u32::from_str_radix(text.rsplit("0x").next()?, 16).ok()
}

/// TSS2_RC layer of the TCTI (the transport: device file, socket) and of its loader.
pub(super) const TCTI_LAYER: u32 = 10;

/// What a TCTI-layer failure means, in words; `None` when it is not one.
pub(super) fn tcti_failure(e: &tss_esapi::Error) -> Option<String> {
    let code = raw_code(e)?;
    if (code >> 16) & 0xff != TCTI_LAYER {
        return None;
    }
    Some(match code & 0xffff {
        // TSS2_BASE_RC_NO_CONNECTION, _IO_ERROR
        8 | 10 => format!("the connection failed: refused, or no such device (TCTI error {code:#x})"),
        // _NOT_IMPLEMENTED, _ABI_MISMATCH, _NOT_SUPPORTED
        2 | 4 | 21 => format!(
            "the TCTI library is missing or unusable, e.g. libtss2-tcti-device.so.0 (TCTI error {code:#x})"
        ),
        // _BAD_VALUE, _BAD_REFERENCE
        5 | 11 => format!("the TCTI configuration is not valid (TCTI error {code:#x})"),
        // _TRY_AGAIN
        9 => format!("the TPM did not answer in time (TCTI error {code:#x})"),
        _ => format!("TCTI error {code:#x}"),
    })
}

/// The failures every call shares; call sites map the kinds that mean something there first.
pub(super) fn classify(e: tss_esapi::Error, doing: &str) -> TpmError {
    match kind(&e) {
        Some(Rc::Lockout) => TpmError::Lockout,
        Some(Rc::Retry | Rc::Yielded | Rc::Testing) => {
            TpmError::Other(format!("{doing}: the TPM is busy ({e})"))
        }
        _ => match tcti_failure(&e) {
            // The transport failed (device gone, connection refused): there is no TPM to ask.
            Some(why) => TpmError::NoDevice(format!("{doing}: {why}")),
            None => TpmError::Other(format!("{doing}: {e}")),
        },
    }
}

pub(super) fn owner_error(e: tss_esapi::Error, doing: &str) -> TpmError {
    match kind(&e) {
        Some(Rc::AuthFail | Rc::BadAuth) => TpmError::OwnerAuthWrong,
        _ => classify(e, doing),
    }
}

pub(super) fn wrapper(e: tss_esapi::Error) -> TpmError {
    TpmError::Other(e.to_string())
}
