//! pod-init's control protocol: parsing a request or an answer must not
//! panic, and whatever parses renders to a text that parses back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spec::control::{Request, Response};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(request) = Request::parse(text) {
        assert_eq!(Request::parse(&request.render()), Ok(request));
    }
    match Response::parse(text) {
        Ok(response) => {
            let rendered = response.render();
            assert_eq!(Response::parse(&rendered).as_ref(), Ok(&response), "round trip through\n{rendered}");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
