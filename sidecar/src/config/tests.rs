use super::*;

#[test]
fn service_flags_and_link_delays_parse_or_explain() {
    assert_eq!(
        parse_service_flag("echo=8080").expect("valid"),
        ("echo".into(), 8080)
    );
    assert!(parse_service_flag("echo").is_err());
    assert!(parse_service_flag("Echo=80").is_err());
    assert!(parse_service_flag("echo=0").is_err());
    let (addr, delay) = parse_link_delay("127.0.0.1:4301=40").expect("valid");
    assert_eq!(addr.port(), 4301);
    assert_eq!(delay, Duration::from_millis(40));
    assert!(parse_link_delay("127.0.0.1:4301").is_err());
    assert!(validate_join_target("seed:4300").is_ok());
    assert!(validate_join_target("seed").is_err());
    assert_eq!(parse_dns_listen("off").expect("off"), None);
    assert_eq!(
        parse_dns_listen("127.0.0.1:53").expect("addr"),
        Some("127.0.0.1:53".parse().expect("addr"))
    );
    assert!(parse_dns_listen("8600").is_err());
}

#[test]
fn dns_settings_come_from_the_file_or_defaults() {
    let dev = || AgentArgs {
        dev: true,
        ..AgentArgs::default()
    };
    let defaults = dev().into_config().expect("dev config");
    assert_eq!(
        defaults.dns_listen,
        Some("127.0.0.1:8600".parse().expect("addr"))
    );
    assert_eq!(defaults.dns_ttl, Duration::from_secs(5));
    let file: AgentArgs = toml::from_str("dns_listen = \"off\"\ndns_ttl = 30").expect("toml");
    let config = dev().merge(file).into_config().expect("config");
    assert_eq!(config.dns_listen, None);
    assert_eq!(config.dns_ttl, Duration::from_secs(30));
    let too_long = AgentArgs {
        dns_ttl: Some(100_000),
        ..dev()
    };
    assert!(too_long.into_config().is_err());
}

#[test]
fn flags_win_over_the_config_file() {
    let file: AgentArgs =
        toml::from_str("node_id = \"from-file\"\nprofile = \"wan\"\njoin = [\"a:1\"]")
            .expect("toml");
    let cli = AgentArgs {
        node_id: Some("from-cli".into()),
        ..AgentArgs::default()
    };
    let merged = cli.merge(file);
    assert_eq!(merged.node_id.as_deref(), Some("from-cli"));
    assert_eq!(merged.profile, Some(Profile::Wan));
    assert_eq!(merged.join, vec!["a:1".to_string()]);
}
