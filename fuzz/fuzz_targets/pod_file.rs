//! Pod files from untrusted bytes: parsing and validation must not panic
//! (nor blow up on aliases or deep nesting), and an error must render.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spec::pod::PodFile;

fuzz_target!(|data: &[u8]| {
    match PodFile::parse(data, "fuzz.yaml") {
        Ok(pod) => {
            // The accessors callers use right after parsing.
            assert_eq!(pod.app_order().len(), pod.apps.len());
            for app in &pod.apps {
                let _ = app.dependencies().count();
                let _ = app.image.name();
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
