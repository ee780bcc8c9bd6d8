//! Test-only: a valid component that does not implement cairn's storage interface.

wit_bindgen::generate!({ world: "greeter", path: "wit" });

struct Greeter;

impl Guest for Greeter {
    fn greet(name: String) -> String {
        format!("hello, {name}")
    }
}

export!(Greeter);
