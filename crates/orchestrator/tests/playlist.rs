//! Playlist rewriting against the real binary: a large playlist of every entry
//! form, remote playlists from a real HTTP server on loopback, and hostile
//! input.

mod common;

use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use common::Orch;
use serde_json::Value;

/// An entry line and what it must become: `(parameter, id)` of the proxy
/// URL, or `None` when it is kept as it is.
type Expected = (String, Option<(String, String)>);

/// A playlist of `n` entries cycling through every form, and what each URL
/// line must become.
fn big_playlist(n: usize) -> (String, Vec<Expected>) {
    let mut text = String::from("#EXTM3U x-tvg-url=\"http://epg.example/guide.xml\"\n");
    let mut expected = Vec::new();
    for i in 0..n {
        let id = format!("{i:040x}");
        let mixed = id.to_uppercase();
        let name = format!(
            "#EXTINF:-1 tvg-id=\"ch{i}\" tvg-logo=\"http://logo.example/{i}.png\" group-title=\"Grüppe {}\",Канал {i} ★",
            i % 7
        );
        let (line, want) = match i % 8 {
            0 => (format!("acestream://{id}"), Some(("id", id.clone()))),
            1 => (format!("ace://{mixed}"), Some(("id", id.clone()))),
            2 => (
                format!("http://192.168.1.20:6878/ace/getstream?id={id}&pid=42"),
                Some(("id", id.clone())),
            ),
            3 => (
                format!("https://acestream.example:443/ace/getstream?content_id={id}"),
                Some(("id", id.clone())),
            ),
            4 => (
                format!("http://127.0.0.1:6878/ace/getstream?infohash={id}"),
                Some(("infohash", id.clone())),
            ),
            5 => (
                format!("http://old-orchestrator:8000/ace/manifest.m3u8?id={id}"),
                Some(("id", id.clone())),
            ),
            // Not AceStream: kept byte for byte.
            6 => (format!("http://cdn.example/live/{i}.m3u8"), None),
            _ => (format!("acestream://not-an-id-{i}"), None),
        };
        text.push_str(&name);
        text.push_str(if i % 2 == 0 { "\r\n" } else { "\n" });
        text.push_str("#EXTVLCOPT:http-referrer=http://example/\n");
        text.push_str(&line);
        text.push_str(if i % 2 == 0 { "\r\n" } else { "\n" });
        expected.push((line, want.map(|(p, id)| (p.to_owned(), id))));
    }
    (text, expected)
}

fn check_rewritten(input: &str, output: &str, expected: &[Expected], base: &str, path: &str) {
    let inputs: Vec<&str> = input.split_inclusive('\n').collect();
    let outputs: Vec<&str> = output.split_inclusive('\n').collect();
    assert_eq!(inputs.len(), outputs.len());
    let mut entries = expected.iter();
    for (i, (a, b)) in inputs.iter().zip(&outputs).enumerate() {
        if a.starts_with('#') {
            assert_eq!(a, b, "line {} changed", i + 1);
            continue;
        }
        let (line, want) = entries.next().unwrap();
        assert_eq!(a.trim_end(), line);
        let ending = &a[a.trim_end_matches(['\r', '\n']).len()..];
        match want {
            Some((param, id)) => {
                assert_eq!(
                    *b,
                    format!("{base}{path}?{param}={id}{ending}"),
                    "line {}",
                    i + 1
                )
            }
            None => assert_eq!(a, b, "line {} changed", i + 1),
        }
    }
    assert!(entries.next().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_entries_of_every_form_point_here() {
    let dir = tempfile::tempdir().unwrap();
    let orch = Orch::start(dir.path(), &[]).await;
    let (input, expected) = big_playlist(1000);
    assert!(
        input.len() > 64 * 1024,
        "larger than the API's usual body limit"
    );
    let client = reqwest::Client::new();
    let response = client
        .post(orch.url("/playlist"))
        .body(input.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "audio/x-mpegurl; charset=utf-8"
    );
    assert_eq!(response.headers()["x-rewritten-entries"], "750");
    let output = response.text().await.unwrap();
    // Without PUBLIC_URL, the base is the request's Host.
    let base = orch.base.clone();
    check_rewritten(&input, &output, &expected, &base, "/ace/getstream");

    let response = client
        .post(orch.url("/playlist?format=hls"))
        .body(input.clone())
        .send()
        .await
        .unwrap();
    let output = response.text().await.unwrap();
    check_rewritten(&input, &output, &expected, &base, "/ace/manifest.m3u8");

    let (status, body) = orch.get("/playlist?format=dash").await;
    assert_eq!(status, 400, "{body}");

    // With PUBLIC_URL, entries point there, and STREAM_TOKEN goes along.
    let dir2 = tempfile::tempdir().unwrap();
    let public = Orch::start(
        dir2.path(),
        &[
            ("PUBLIC_URL", "https://tv.example.com/"),
            ("STREAM_TOKEN", "s3cret"),
        ],
    )
    .await;
    let refused = client
        .post(public.url("/playlist"))
        .body(input.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let output = client
        .post(public.url("/playlist?token=s3cret"))
        .body("#EXTM3U\n#EXTINF:-1,A\nacestream://0123456789abcdef0123456789abcdef01234567\n")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        output,
        "#EXTM3U\n#EXTINF:-1,A\nhttps://tv.example.com/ace/getstream?id=0123456789abcdef0123456789abcdef01234567&token=s3cret\n"
    );
}

/// A playlist server on loopback: `/list.m3u8`, `/huge` (6 MiB), `/slow`
/// (never finishes), `/away` (redirects to a host that is not allowed),
/// `/binary`.
async fn fixture_server() -> String {
    let app = axum::Router::new()
        .route(
            "/list.m3u8",
            get(|| async {
                "#EXTM3U\n#EXTINF:-1 group-title=\"News\",One\nacestream://0123456789abcdef0123456789abcdef01234567\n"
            }),
        )
        .route(
            "/huge",
            get(|| async { "#EXTM3U\n".to_owned() + &"a".repeat(6 * 1024 * 1024) }),
        )
        .route(
            "/slow",
            get(|| async {
                let body = futures::stream::unfold(0u32, |n| async move {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    Some((Ok::<_, std::io::Error>(axum::body::Bytes::from("#\n")), n + 1))
                });
                axum::body::Body::from_stream(body)
            }),
        )
        .route(
            "/away",
            get(|| async {
                (
                    StatusCode::FOUND,
                    [(header::LOCATION, "http://localhost:1/list.m3u8")],
                )
                    .into_response()
            }),
        )
        .route(
            "/binary",
            get(|| async { vec![0x47u8, 0x40, 0x00, 0x10, 0x00, 0xff, 0x00] }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// The status and `detail` of a refused request.
async fn refused(send: reqwest::RequestBuilder) -> (u16, String) {
    let response = send.send().await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("a JSON error");
    (
        status,
        body["detail"].as_str().expect("a detail").to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_playlists_and_forbidden_hosts_get_clear_4xx() {
    let server = fixture_server().await;
    let dir = tempfile::tempdir().unwrap();
    // The fixture's address is listed exactly; `*` allows any public host.
    let orch = Orch::start(
        dir.path(),
        &[
            ("PLAYLIST_ALLOWED_HOSTS", "127.0.0.1,*"),
            ("PLAYLIST_FETCH_TIMEOUT_S", "2"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let post = |body: Vec<u8>| client.post(orch.url("/playlist")).body(body);

    // Binary.
    let mut binary: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    binary[10] = 0;
    let (status, detail) = refused(post(binary)).await;
    assert_eq!(status, 415, "{detail}");
    assert!(detail.contains("not text"), "{detail}");
    // 10 MB.
    let (status, detail) = refused(post(vec![b'#'; 10_000_000])).await;
    assert_eq!(status, 413, "{detail}");
    assert!(detail.contains("5242880"), "{detail}");
    // A line of 1 MB.
    let mut long = b"#EXTM3U\n#EXTINF:-1,x\n".to_vec();
    long.extend(std::iter::repeat_n(b'a', 1 << 20));
    let (status, detail) = refused(post(long)).await;
    assert_eq!(status, 400, "{detail}");
    assert!(detail.contains("line 3"), "{detail}");

    // A remote playlist from the listed host comes back rewritten.
    let fetched = client
        .get(orch.url(&format!("/playlist?format=hls&url={server}/list.m3u8")))
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), 200);
    let text = fetched.text().await.unwrap();
    assert_eq!(
        text,
        format!(
            "#EXTM3U\n#EXTINF:-1 group-title=\"News\",One\n{}/ace/manifest.m3u8?id=0123456789abcdef0123456789abcdef01234567\n",
            orch.base
        )
    );

    // Private addresses reached through a pattern, and other refusals.
    let port = server.rsplit(':').next().unwrap();
    for (url, status, words) in [
        (format!("http://localhost:{port}/list.m3u8"), 400, "private"),
        ("http://10.0.0.1/list.m3u8".into(), 400, "private"),
        (
            "http://169.254.169.254/latest/meta-data".into(),
            400,
            "private",
        ),
        (format!("http://[::1]:{port}/list.m3u8"), 400, "private"),
        ("file:///etc/passwd".into(), 400, "http"),
        ("not a url".into(), 400, "not a URL"),
        (format!("{server}/away"), 400, "private"),
        (format!("{server}/huge"), 413, "larger"),
        (format!("{server}/slow"), 504, "within"),
        (format!("{server}/binary"), 415, "not text"),
    ] {
        let started = tokio::time::Instant::now();
        let (got, detail) = refused(
            client
                .get(orch.url("/playlist"))
                .query(&[("url", url.as_str())]),
        )
        .await;
        assert_eq!(got, status, "{url}: {detail}");
        assert!(detail.contains(words), "{url}: {detail}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{url} took too long"
        );
    }

    // A host not on the list is never contacted.
    let dir2 = tempfile::tempdir().unwrap();
    let strict = Orch::start(
        dir2.path(),
        &[("PLAYLIST_ALLOWED_HOSTS", "lists.example.com")],
    )
    .await;
    let (status, detail) = refused(
        client
            .get(strict.url("/playlist"))
            .query(&[("url", format!("{server}/list.m3u8"))]),
    )
    .await;
    assert_eq!(status, 400, "{detail}");
    assert!(detail.contains("not in PLAYLIST_ALLOWED_HOSTS"), "{detail}");
    let dir3 = tempfile::tempdir().unwrap();
    let off = Orch::start(dir3.path(), &[]).await;
    let (status, detail) = refused(
        client
            .get(off.url("/playlist"))
            .query(&[("url", format!("{server}/list.m3u8"))]),
    )
    .await;
    assert_eq!(status, 400, "{detail}");
    assert!(
        detail.contains("PLAYLIST_ALLOWED_HOSTS is empty"),
        "{detail}"
    );
}
