//! How answers are printed: JSON as it came, or one line per key for people.

pub(super) fn print_value(v: &serde_json::Value, json: bool, human: impl FnOnce(&serde_json::Value) -> String) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        println!("{}", human(v));
    }
}

pub(super) fn key_line(v: &serde_json::Value) -> String {
    let list = |k: &str| {
        v[k].as_array().map(|a| a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(",")).unwrap_or_default()
    };
    format!(
        "{}  {:<20} scopes={} audiences={} {}{}",
        v["id"].as_str().unwrap_or(""),
        v["name"].as_str().unwrap_or(""),
        list("scopes"),
        list("audiences"),
        if v["active"].as_bool() == Some(true) { "active" } else { "INACTIVE" },
        if v["require_otp"].as_bool() == Some(true) { " otp" } else { "" },
    )
}
