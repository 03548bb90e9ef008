use super::*;

#[test]
fn references() {
    let name = |s: &str| match ImageRef::parse(s) {
        Ok(ImageRef::Name { name, labels }) => (name.to_string(), labels),
        other => panic!("{s}: {other:?}"),
    };
    let (n, l) = name("example.com/redis:7.0,os=linux");
    assert_eq!(n, "example.com/redis");
    assert_eq!(l.get("version").map(String::as_str), Some("7.0"));
    assert_eq!(l.get("os").map(String::as_str), Some("linux"));
    assert!(matches!(ImageRef::parse("https://x/y.aci"), Ok(ImageRef::Url(_))));
    assert!(matches!(ImageRef::parse("./y.aci"), Ok(ImageRef::File(_))));
    assert!(matches!(ImageRef::parse("file:///y"), Ok(ImageRef::File(_))));
    assert!(ImageRef::parse("ftp://x").is_err());
    assert!(ImageRef::parse("Example.com/x").is_err());
    assert!(ImageRef::parse("example.com/x:").is_err());
    assert!(ImageRef::parse("example.com/x,os").is_err());
}
