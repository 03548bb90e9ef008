//! Unit files: parsing must not panic, and a unit that parses renders to a
//! text that parses back to the same unit, which renders the same again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spec::unit::Unit;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let unit = match Unit::parse(text, "fuzz.unit") {
        Ok(unit) => unit,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let rendered = unit.render();
    let again = Unit::parse(&rendered, "rendered.unit")
        .unwrap_or_else(|e| panic!("rendered unit does not parse: {e}\n{rendered}"));
    assert_eq!(again, unit, "round trip through\n{rendered}");
    assert_eq!(again.render(), rendered);
});
