//! Stop signals as Docker reads them (`SIGUSR1`, `USR1`, `10`, `SIGRTMIN+3`): checked before
//! anything is touched, so that a typo in a label refuses the update instead of being ignored.
//! The names are those of Docker's own Linux signal table (moby `pkg/signal`); no crate holds
//! that table with Docker's spelling of the real-time signals, so it is written out here.

/// Linux signal names without `SIG`, with their numbers.
const SIGNALS: [(&str, u8); 34] = [
    ("ABRT", 6),
    ("ALRM", 14),
    ("BUS", 7),
    ("CHLD", 17),
    ("CLD", 17),
    ("CONT", 18),
    ("FPE", 8),
    ("HUP", 1),
    ("ILL", 4),
    ("INT", 2),
    ("IO", 29),
    ("IOT", 6),
    ("KILL", 9),
    ("PIPE", 13),
    ("POLL", 29),
    ("PROF", 27),
    ("PWR", 30),
    ("QUIT", 3),
    ("SEGV", 11),
    ("STKFLT", 16),
    ("STOP", 19),
    ("SYS", 31),
    ("TERM", 15),
    ("TRAP", 5),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("USR1", 10),
    ("USR2", 12),
    ("VTALRM", 26),
    ("WINCH", 28),
    ("XCPU", 24),
    ("XFSZ", 25),
];

/// `SIGRTMIN`, as Docker numbers it (glibc reserves 32 and 33).
const RTMIN: u8 = 34;
/// `SIGRTMAX`.
const RTMAX: u8 = 64;

/// A stop signal Docker accepts, by its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopSignal(u8);

impl StopSignal {
    /// Reads a signal the way Docker does: a number, or a name with or without `SIG`, in any
    /// case; `RTMIN+n` and `RTMAX-n` for the real-time signals.
    pub fn parse(value: &str) -> Result<Self, String> {
        let text = value.trim();
        // The value comes from a label: echoed bounded.
        let invalid = || {
            format!(
                "{:?} is not a signal (e.g. SIGTERM, SIGUSR1, 10)",
                ouroboros_shared::echo::name(value)
            )
        };
        if text.is_empty() {
            return Err(invalid());
        }
        if let Ok(n) = text.parse::<u8>() {
            return (1..=RTMAX)
                .contains(&n)
                .then_some(Self(n))
                .ok_or_else(invalid);
        }
        let upper = text.to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        if let Some((_, n)) = SIGNALS.iter().find(|(s, _)| *s == name) {
            return Ok(Self(*n));
        }
        let offset = |rest: &str| -> Option<u8> {
            if rest.is_empty() {
                return Some(0);
            }
            rest.parse::<u8>().ok().filter(|n| *n <= RTMAX - RTMIN)
        };
        if let Some(rest) = name.strip_prefix("RTMIN") {
            let n = match rest.strip_prefix('+') {
                Some(r) => offset(r),
                None => offset(rest),
            };
            return n.map(|n| Self(RTMIN + n)).ok_or_else(invalid);
        }
        if let Some(rest) = name.strip_prefix("RTMAX") {
            let n = match rest.strip_prefix('-') {
                Some(r) => offset(r),
                None => offset(rest),
            };
            return n.map(|n| Self(RTMAX - n)).ok_or_else(invalid);
        }
        Err(invalid())
    }

    /// The signal's number, as the engine's kill call takes it.
    pub fn number(self) -> u8 {
        self.0
    }

    /// SIGTERM: what a plain stop sends anyway.
    pub fn is_term(self) -> bool {
        self.0 == 15
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_spellings_are_read() {
        for (text, n) in [
            ("SIGUSR1", 10),
            ("usr1", 10),
            ("SigTerm", 15),
            ("10", 10),
            ("SIGRTMIN", 34),
            ("SIGRTMIN+3", 37),
            ("RTMAX-1", 63),
            ("SIGRTMAX", 64),
            ("QUIT", 3),
        ] {
            assert_eq!(
                StopSignal::parse(text).map(StopSignal::number),
                Ok(n),
                "{text}"
            );
        }
        assert!(StopSignal::parse("SIGTERM").unwrap().is_term());
    }

    #[test]
    fn anything_else_is_refused_with_the_value() {
        for bad in [
            "SIGFOO",
            "",
            " ",
            "0",
            "65",
            "SIGRTMIN+31",
            "RTMAX-31",
            "TERM1",
            "-9",
        ] {
            let error = StopSignal::parse(bad).unwrap_err();
            assert!(error.contains("is not a signal"), "{bad}: {error}");
        }
        // A 10 KB label is echoed by its start only.
        let error = StopSignal::parse(&"SIGX".repeat(2500)).unwrap_err();
        assert!(error.len() < 200, "{error}");
        assert!(error.starts_with("\"SIGXSIGX"), "{error}");
    }
}
