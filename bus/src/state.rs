//! `enum xenbus_state` of `xen/include/public/io/xenbus.h`, and its strict parsing.

use core::fmt;

/// The state of either end of a XenBus device (`xen/io/xenbus.h`, `enum xenbus_state`).
///
/// Written to `<device node>/state` as a decimal number. States imply nothing about the
/// device's connection to the rest of the OS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum XenbusState {
    /// `XenbusStateUnknown` (0): also what a missing `state` node reads as in Linux.
    Unknown = 0,
    /// `XenbusStateInitialising` (1): the toolstack created the device.
    Initialising = 1,
    /// `XenbusStateInitWait` (2): finished early initialisation, waiting for the peer or
    /// hotplug scripts.
    InitWait = 2,
    /// `XenbusStateInitialised` (3): waiting for a connection from the peer.
    Initialised = 3,
    /// `XenbusStateConnected` (4).
    Connected = 4,
    /// `XenbusStateClosing` (5): being closed because of an error or an unplug.
    Closing = 5,
    /// `XenbusStateClosed` (6).
    Closed = 6,
    /// `XenbusStateReconfiguring` (7).
    Reconfiguring = 7,
    /// `XenbusStateReconfigured` (8).
    Reconfigured = 8,
}

/// A `state` value that is not one of the nine states: out of range, not a plain decimal
/// number, empty, or with blanks. Peer input, so an error and never a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadState;

impl fmt::Display for BadState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a XenbusState")
    }
}

impl XenbusState {
    /// All nine, in numeric order.
    pub const ALL: [XenbusState; 9] = [
        XenbusState::Unknown,
        XenbusState::Initialising,
        XenbusState::InitWait,
        XenbusState::Initialised,
        XenbusState::Connected,
        XenbusState::Closing,
        XenbusState::Closed,
        XenbusState::Reconfiguring,
        XenbusState::Reconfigured,
    ];

    /// The state numbered `n`.
    pub const fn from_u32(n: u32) -> Option<XenbusState> {
        match n {
            0 => Some(XenbusState::Unknown),
            1 => Some(XenbusState::Initialising),
            2 => Some(XenbusState::InitWait),
            3 => Some(XenbusState::Initialised),
            4 => Some(XenbusState::Connected),
            5 => Some(XenbusState::Closing),
            6 => Some(XenbusState::Closed),
            7 => Some(XenbusState::Reconfiguring),
            8 => Some(XenbusState::Reconfigured),
            _ => None,
        }
    }

    /// Parse a `state` node's value. Strict: ASCII decimal digits only (leading zeros are
    /// accepted, as `%d` would), no sign, no blanks, no trailing NUL or newline, value 0..=8.
    /// Linux reads it with `xenbus_scanf("%d")`, which would also take `" 4"` or `"4x"`; a
    /// peer writing those is broken and is treated as such.
    pub fn parse(v: &[u8]) -> Result<XenbusState, BadState> {
        if v.is_empty() || v.len() > 10 || !v.iter().all(u8::is_ascii_digit) {
            return Err(BadState);
        }
        let n = v
            .iter()
            .fold(0u64, |acc, &b| acc * 10 + u64::from(b - b'0'));
        u32::try_from(n)
            .ok()
            .and_then(XenbusState::from_u32)
            .ok_or(BadState)
    }

    /// The number.
    pub const fn as_u32(self) -> u32 {
        self as u32
    }

    /// The decimal string written to `state` (`"0"`..`"8"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            XenbusState::Unknown => "0",
            XenbusState::Initialising => "1",
            XenbusState::InitWait => "2",
            XenbusState::Initialised => "3",
            XenbusState::Connected => "4",
            XenbusState::Closing => "5",
            XenbusState::Closed => "6",
            XenbusState::Reconfiguring => "7",
            XenbusState::Reconfigured => "8",
        }
    }

    /// The name Linux's `xenbus_strstate()` prints.
    pub const fn name(self) -> &'static str {
        match self {
            XenbusState::Unknown => "Unknown",
            XenbusState::Initialising => "Initialising",
            XenbusState::InitWait => "InitWait",
            XenbusState::Initialised => "Initialised",
            XenbusState::Connected => "Connected",
            XenbusState::Closing => "Closing",
            XenbusState::Closed => "Closed",
            XenbusState::Reconfiguring => "Reconfiguring",
            XenbusState::Reconfigured => "Reconfigured",
        }
    }

    /// Closing or Closed.
    pub const fn is_closing(self) -> bool {
        matches!(self, XenbusState::Closing | XenbusState::Closed)
    }
}

impl core::str::FromStr for XenbusState {
    type Err = BadState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        XenbusState::parse(s.as_bytes())
    }
}

impl fmt::Display for XenbusState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.as_u32())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips() {
        for (i, s) in XenbusState::ALL.iter().enumerate() {
            assert_eq!(s.as_u32() as usize, i);
            assert_eq!(XenbusState::parse(s.as_str().as_bytes()), Ok(*s));
            assert_eq!(XenbusState::from_u32(i as u32), Some(*s));
        }
        assert_eq!(XenbusState::parse(b"04"), Ok(XenbusState::Connected));
    }

    #[test]
    fn nonsense_is_an_error() {
        for v in [
            &b""[..],
            b"9",
            b"10",
            b"-1",
            b"+4",
            b" 4",
            b"4 ",
            b"4\n",
            b"4\0",
            b"four",
            b"0x4",
            b"4294967300",
            b"99999999999999999999",
            b"\xff",
        ] {
            assert_eq!(XenbusState::parse(v), Err(BadState), "{v:?}");
        }
        assert_eq!(XenbusState::from_u32(9), None);
    }
}
