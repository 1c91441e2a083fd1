//! The service without a protocol: answers served from the previous one, and what stops a
//! request (an edit, a newer request, shutdown), on the tiny random fixture model.

use std::path::PathBuf;

use futures::FutureExt;
use serde_json::json;

use super::requests::Source;
use super::*;
use crate::context::Target;
use crate::position::Encoding;

const SRC: &str = "fn add(a: i32, b: i32) -> i32 {\n    let sum = foo();\n    sum\n}\n";
const URI: &str = "file:///s.rs";

async fn service(settings: serde_json::Value) -> Service {
    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/qwen2-gqa-untied");
    let service = Service::new(Some(fixture));
    service.configure(&settings).unwrap();
    service.load();
    service.ready().await.expect("the fixture loads");
    service.open(URI, "rust", 1, SRC);
    service
}

fn at(byte: usize) -> impl FnOnce(&ropey::Rope) -> Result<usize, PositionError> {
    move |_| Ok(byte)
}

fn insert(service: &Service, version: i32, byte: usize, text: &str) {
    let rope = ropey::Rope::from_str(SRC);
    let p = crate::position::from_byte(&rope, byte, Encoding::Utf8);
    let change = crate::document::TextChange {
        range: Some((p, p)),
        text: text.into(),
    };
    service
        .change(URI, version, &[change], Encoding::Utf8)
        .unwrap();
}

#[tokio::test]
async fn typing_the_start_of_an_answer_is_answered_from_it() {
    let service = service(json!({"verify": false, "candidates": 3, "debounceMs": 0})).await;
    let cursor = SRC.find("foo(").unwrap() + 4;
    let first = service
        .complete(URI, at(cursor), Options::default())
        .await
        .unwrap()
        .expect("an answer");
    assert_eq!(first.source, Source::Model);
    // An item whose first character leaves something to insert.
    let item = first
        .answer
        .items
        .iter()
        .find(|i| {
            let mut c = i.text.chars();
            c.next().is_some() && !c.as_str().trim().is_empty()
        })
        .expect("the loose settings give an item of two characters or more")
        .clone();
    let typed: String = item.text.chars().take(1).collect();
    insert(&service, 2, cursor, &typed);
    let second = service
        .complete(URI, at(cursor + typed.len()), Options::default())
        .await
        .unwrap()
        .expect("an answer");
    assert_eq!(second.source, Source::TypedAhead);
    assert_eq!(second.answer.kind, first.answer.kind);
    assert_eq!(
        second.answer.replace,
        cursor + typed.len()..cursor + typed.len()
    );
    let rest = &item.text[typed.len()..];
    assert!(
        second
            .answer
            .items
            .iter()
            .any(|i| i.text == rest && i.mean_logprob == item.mean_logprob),
        "{:?} should hold {rest:?} with the item's score",
        second.answer.items
    );
}

#[tokio::test]
async fn what_stops_a_request_is_its_answer() {
    // A long debounce holds each request until the next step of the test.
    let service = service(json!({"verify": false, "debounceMs": 400})).await;
    let cursor = SRC.find("sum\n}").unwrap() + 3;

    // An edit while the request waits: its result would be for an older text.
    let request = service.complete(URI, at(cursor), Options::default());
    tokio::pin!(request);
    assert!(
        request.as_mut().now_or_never().is_none(),
        "still debouncing"
    );
    insert(&service, 2, 0, "//\n");
    assert!(matches!(request.await, Err(Error::Modified)));

    // A newer request for the same document replaces the older one.
    let older = service.complete(URI, at(cursor), Options::default());
    tokio::pin!(older);
    assert!(older.as_mut().now_or_never().is_none());
    let newer = service.complete(URI, at(cursor - 1), Options::default());
    let (older, newer) = tokio::join!(older, newer);
    assert!(matches!(older, Err(Error::Superseded)), "{:?}", older.err());
    assert!(newer.is_ok(), "{:?}", newer.err());

    // Shutdown stops everything.
    let request = service.complete(URI, at(cursor), Options::default());
    tokio::pin!(request);
    assert!(request.as_mut().now_or_never().is_none());
    service.shut_down();
    assert!(matches!(request.await, Err(Error::ShuttingDown)));
}

#[tokio::test]
async fn bad_requests_are_errors_and_unknown_documents_have_nothing() {
    let service = service(json!({"debounceMs": 0})).await;
    let past_end = |_: &ropey::Rope| Err(PositionError::ReversedRange);
    let r = service.complete(URI, past_end, Options::default()).await;
    assert!(matches!(r, Err(Error::Position(_))));
    let r = service
        .complete("file:///nowhere.rs", at(0), Options::default())
        .await;
    assert!(matches!(r, Ok(None)));
    let r = service
        .edit("file:///nowhere.rs", |_| Ok(Target::Function(0)))
        .await;
    assert!(matches!(r, Err(Error::UnknownDocument(_))));
    // Outside any function: nothing to rewrite.
    let outside = SRC.len();
    let r = service.edit(URI, |_| Ok(Target::Function(outside))).await;
    assert!(matches!(r, Err(Error::Plan(_))), "{:?}", r.err());
}

/// `complete` and `eval` go through the service, and so does the editor: its answer is the
/// pipeline's own (the first request on a document runs on an empty context cache, which is
/// exact), for both infill layouts.
#[tokio::test]
async fn the_service_answers_what_the_pipeline_does() {
    for fixture in ["qwen2-gqa-untied", "trainer-spm"] {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../model/tests/fixtures")
            .join(fixture);
        let settings = json!({"verify": false, "candidates": 2, "debounceMs": 0});
        let service = Service::new(Some(dir.clone()));
        service.configure(&settings).unwrap();
        service.load();
        service.ready().await.unwrap();
        service.open(URI, "rust", 1, SRC);
        let cursor = SRC.find("sum\n}").unwrap() + 3;
        let served = service
            .complete(URI, at(cursor), Options::default())
            .await
            .unwrap()
            .expect("an answer");

        let lm = model::DiffusionLm::load_dir(&dir).unwrap();
        let req = crate::complete::Request {
            snapshot: crate::document::Snapshot::from_text(
                URI,
                crate::language::by_language_id("rust"),
                SRC,
            ),
            target: Target::Cursor(cursor),
            settings: service.settings(),
            span_len: None,
            heal: true,
            policy: None,
            cancel: CancelToken::default(),
        };
        let direct = crate::complete::complete(&lm, &req, None).unwrap();
        assert!(!direct.items.is_empty(), "{fixture}: nothing to compare");
        assert_eq!(served.answer.items, direct.items, "{fixture}");
        assert_eq!(served.answer.replace, direct.replace, "{fixture}");
    }
}
