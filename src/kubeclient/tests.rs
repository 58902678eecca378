use super::*;

fn config_with(auth: AuthInfo) -> Config {
    let mut config = Config::new("https://127.0.0.1:6443".parse().unwrap());
    config.root_cert = None;
    config.auth_info = auth;
    config
}

fn error(config: &Config) -> String {
    match client(config) {
        Ok(_) => panic!("a client from an unsupported configuration"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn credentials_it_does_not_run_fail_naming_what_to_use() {
    let exec: kube::config::ExecConfig = serde_json::from_value(serde_json::json!({
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": "aws",
        "args": ["eks", "get-token"],
    }))
    .unwrap();
    let e = error(&config_with(AuthInfo {
        exec: Some(exec),
        ..Default::default()
    }));
    assert!(e.contains("an exec plugin") && e.contains("token"), "{e}");

    let e = error(&config_with(AuthInfo {
        username: Some("admin".into()),
        ..Default::default()
    }));
    assert!(e.contains("a username and password"), "{e}");

    let mut insecure = config_with(AuthInfo::default());
    insecure.accept_invalid_certs = true;
    assert!(error(&insecure).contains("insecure-skip-tls-verify"));

    let mut proxied = config_with(AuthInfo::default());
    proxied.proxy_url = Some("http://proxy:3128".parse().unwrap());
    assert!(error(&proxied).contains("proxy-url"));

    // https without any CA to check the server against.
    assert!(error(&config_with(AuthInfo::default())).contains("certificate-authority"));
}

#[tokio::test]
async fn bad_credentials_name_the_field() {
    let e = error(&config_with(AuthInfo {
        client_certificate_data: Some("not base64!".into()),
        client_key_data: Some("a2V5".to_string().into()),
        ..Default::default()
    }));
    assert!(e.starts_with("client-certificate-data:"), "{e}");

    let e = error(&config_with(AuthInfo {
        client_certificate_data: Some("bm90IGEgY2VydGlmaWNhdGU=".into()),
        ..Default::default()
    }));
    assert!(e.contains("client-key") && e.contains("missing"), "{e}");

    let e = error(&config_with(AuthInfo {
        token_file: Some("/nonexistent/token".into()),
        ..Default::default()
    }));
    assert!(e.starts_with("token-file /nonexistent/token:"), "{e}");

    let e = error(&config_with(AuthInfo {
        token: Some("line\nbreak".to_string().into()),
        ..Default::default()
    }));
    assert!(e.contains("token"), "{e}");
}

#[test]
fn a_token_file_is_read_again_once_its_period_has_passed() {
    let dir = std::env::temp_dir().join(format!("ck-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("token");
    std::fs::write(&path, "first\n").unwrap();
    let token = Token::file(path.clone()).unwrap();
    assert_eq!(token.header(), "Bearer first");
    assert!(token.header().is_sensitive());

    // Rotated on disk: still the first until the period has passed.
    std::fs::write(&path, "second").unwrap();
    assert_eq!(token.header(), "Bearer first");
    token.current.lock().unwrap().1 = Instant::now() - TOKEN_FILE_PERIOD;
    assert_eq!(token.header(), "Bearer second");

    // A file that vanished keeps the last good token.
    std::fs::remove_file(&path).unwrap();
    token.current.lock().unwrap().1 = Instant::now() - TOKEN_FILE_PERIOD;
    assert_eq!(token.header(), "Bearer second");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn requests_carry_the_token() {
    let (service, mut handle) = tower_test::mock::pair::<Request<()>, ()>();
    let mut service = BearerLayer(Arc::new(Token::fixed("abc").unwrap())).layer(service);
    handle.allow(1);
    let call = tokio::spawn(async move {
        service.ready().await.unwrap();
        service.call(Request::new(())).await
    });
    let (request, reply) = handle.next_request().await.unwrap();
    assert_eq!(request.headers()[AUTHORIZATION], "Bearer abc");
    reply.send_response(());
    call.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn start_up_waits_out_transient_answers_and_returns_the_others() {
    let answer = |code: u16| {
        kube::Error::Api(Box::new(
            kube::core::Status::failure("answer", "Test").with_code(code),
        ))
    };
    let mut script = vec![Err(answer(503)), Err(answer(429)), Ok(7)].into_iter();
    let started = tokio::time::Instant::now();
    let got = until_reachable("a test", || std::future::ready(script.next().unwrap())).await;
    assert_eq!(got.unwrap(), 7);
    // Backoff 1 s, then 2 s.
    assert_eq!(started.elapsed(), Duration::from_secs(3));

    for code in [404, 403, 422] {
        let mut calls = 0;
        let got: kube::Result<()> = until_reachable("a test", || {
            calls += 1;
            std::future::ready(Err(answer(code)))
        })
        .await;
        assert!(matches!(got, Err(kube::Error::Api(s)) if s.code == code));
        assert_eq!(calls, 1, "{code} is not waited out");
    }
}
