//! The model worker: one dedicated thread owns the model, takes jobs from a bounded queue and
//! never lets a panic escape. The async side only ever awaits a oneshot reply.
//!
//! Why a thread and not `spawn_blocking`: the model is CPU-bound and single-instance; one
//! owner thread gives a natural FIFO, keeps its caches warm, and leaves the message loop's
//! threads free. The per-document context K/V caches live here, next to the model.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use model::{ContextCache, DiffusionLm};
use tokio::sync::{oneshot, watch};

/// Jobs waiting for the model; more than this and new requests get no answer instead of a
/// growing backlog (superseded jobs leave the queue quickly, see [`Engine::run`]).
const QUEUE: usize = 8;

/// Set once, read between refinement steps (and before a job starts).
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    /// Whether a request still holds this token besides the caller.
    pub fn in_use(&self) -> bool {
        Arc::strong_count(&self.0) > 1
    }
    /// Whether both handles belong to the same request.
    pub fn same(&self, other: &CancelToken) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Where the model comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// The model compiled into the binary (model/default/).
    Default,
    Dir(PathBuf),
}

impl ModelSource {
    pub fn from_option(dir: Option<PathBuf>) -> Self {
        dir.map_or(ModelSource::Default, ModelSource::Dir)
    }

    pub fn load(&self) -> Result<DiffusionLm, model::ModelError> {
        match self {
            ModelSource::Default => DiffusionLm::load_default(),
            ModelSource::Dir(dir) => DiffusionLm::load_dir(dir),
        }
    }
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelSource::Default => f.write_str("the embedded model"),
            ModelSource::Dir(dir) => write!(f, "{}", dir.display()),
        }
    }
}

/// Why a model did not load: shown to the user, so it names the folder and the file at fault.
#[derive(Clone, Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{from}: {error}")]
    Model {
        from: ModelSource,
        error: Arc<model::ModelError>,
    },
    #[error("{from}: panic while loading: {message}")]
    Panicked { from: ModelSource, message: String },
}

/// Where the model worker stands.
#[derive(Clone, Debug)]
pub enum ModelStatus {
    /// Nothing asked for yet.
    Idle,
    Loading(ModelSource),
    /// Loaded: the model's `describe()`.
    Ready(String),
    Failed(LoadError),
}

impl std::fmt::Display for ModelStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelStatus::Idle => f.write_str("no model asked for yet"),
            ModelStatus::Loading(from) => write!(f, "loading {from}"),
            ModelStatus::Ready(description) => f.write_str(description),
            ModelStatus::Failed(e) => write!(f, "{e}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no model: {0}")]
    NoModel(LoadError),
    #[error("the model queue is full")]
    Busy,
    #[error("cancelled")]
    Cancelled,
    #[error("the model panicked: {0}")]
    Panicked(String),
    #[error("the model worker has stopped")]
    Stopped,
}

type Job = Box<dyn FnOnce(&DiffusionLm, &mut Caches) + Send>;

/// Documents whose context keys/values are kept between requests.
const CACHED_DOCUMENTS: usize = 4;

/// Context K/V caches of the most recently completed documents, owned by the model thread, so
/// a keystroke recomputes only the context tokens near the edit.
#[derive(Default)]
pub struct Caches {
    entries: Vec<(String, ContextCache)>,
}

impl Caches {
    /// The cache of `uri`, created (evicting the least recently used) if needed.
    pub fn for_document(&mut self, uri: &str) -> &mut ContextCache {
        let i = match self.entries.iter().position(|(u, _)| u == uri) {
            Some(i) => i,
            None => {
                if self.entries.len() >= CACHED_DOCUMENTS {
                    self.entries.remove(0);
                }
                self.entries
                    .push((uri.to_string(), ContextCache::default()));
                self.entries.len() - 1
            }
        };
        let entry = self.entries.remove(i);
        self.entries.push(entry);
        &mut self.entries.last_mut().expect("just pushed").1
    }
}

enum Msg {
    Load(ModelSource),
    Run(Job),
}

/// Handle to the worker thread; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    tx: SyncSender<Msg>,
    status: watch::Receiver<ModelStatus>,
}

impl Engine {
    pub fn start() -> Engine {
        let (tx, rx) = sync_channel::<Msg>(QUEUE);
        let (status_tx, status) = watch::channel(ModelStatus::Idle);
        let spawned = std::thread::Builder::new().name("diffusion-model".into()).spawn(move || {
            let mut lm: Option<DiffusionLm> = None;
            let mut caches = Caches::default();
            while let Ok(msg) = rx.recv() {
                match msg {
                    Msg::Load(source) => {
                        status_tx.send_replace(ModelStatus::Loading(source.clone()));
                        let t0 = Instant::now();
                        lm = None;
                        caches = Caches::default();
                        let status = match catch_unwind(AssertUnwindSafe(|| source.load())) {
                            Ok(Ok(m)) => {
                                let d = m.describe();
                                tracing::info!(model = %d, ms = t0.elapsed().as_millis() as u64, "model loaded");
                                lm = Some(m);
                                ModelStatus::Ready(d)
                            }
                            Ok(Err(e)) => ModelStatus::Failed(LoadError::Model { from: source, error: Arc::new(e) }),
                            Err(p) => ModelStatus::Failed(LoadError::Panicked { from: source, message: panic_message(&*p) }),
                        };
                        if let ModelStatus::Failed(reason) = &status {
                            tracing::error!(%reason, "model failed to load");
                        }
                        status_tx.send_replace(status);
                    }
                    // A job without a model is dropped; its caller sees `Cancelled`/`NoModel`.
                    Msg::Run(job) => {
                        if let Some(m) = &lm {
                            job(m, &mut caches);
                        }
                    }
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start the model thread: {e}");
        }
        Engine { tx, status }
    }

    /// Starts (re)loading the model; status goes Loading → Ready/Failed.
    pub fn load(&self, source: ModelSource) {
        // The queue may be full of jobs; a load must not be lost, and this runs off the loop.
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send(Msg::Load(source));
        });
    }

    pub fn status(&self) -> ModelStatus {
        self.status.borrow().clone()
    }

    /// Waits until no load is pending, then returns the model description or why there is none.
    pub async fn ready(&self) -> Result<String, EngineError> {
        let mut rx = self.status.clone();
        let status = rx
            .wait_for(|s| matches!(s, ModelStatus::Ready(_) | ModelStatus::Failed(_)))
            .await
            .map_err(|_| EngineError::Stopped)?;
        match &*status {
            ModelStatus::Ready(d) => Ok(d.clone()),
            ModelStatus::Failed(e) => Err(EngineError::NoModel(e.clone())),
            _ => unreachable!("wait_for only returns Ready or Failed"),
        }
    }

    /// Runs `f` on the model thread. Never blocks: a full queue is `Busy`. A job whose token is
    /// cancelled before it starts is skipped; a panic inside `f` becomes `Panicked`.
    pub async fn run<T: Send + 'static>(
        &self,
        cancel: CancelToken,
        f: impl FnOnce(&DiffusionLm, &mut Caches) -> T + Send + 'static,
    ) -> Result<T, EngineError> {
        self.ready().await?;
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |lm, caches| {
            if cancel.is_cancelled() {
                return;
            }
            let r =
                catch_unwind(AssertUnwindSafe(|| f(lm, caches))).map_err(|p| panic_message(&*p));
            if r.is_err() {
                // The job may have left a cache half-updated; the next request starts afresh.
                *caches = Caches::default();
            }
            let _ = reply.send(r);
        });
        match self.tx.try_send(Msg::Run(job)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(EngineError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(EngineError::Stopped),
        }
        match answer.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(msg)) => Err(EngineError::Panicked(msg)),
            Err(_) => Err(EngineError::Cancelled),
        }
    }
}

pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> ModelSource {
        ModelSource::Dir(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../model/tests/fixtures/qwen2-gqa-untied"),
        )
    }

    #[tokio::test]
    async fn a_panicking_job_does_not_stop_the_worker() {
        let engine = Engine::start();
        engine.load(fixture());
        engine.ready().await.expect("fixture loads");
        let r = engine
            .run(CancelToken::default(), |_, _| -> usize { panic!("boom") })
            .await;
        assert!(
            matches!(r, Err(EngineError::Panicked(ref m)) if m == "boom"),
            "{r:?}"
        );
        let n = engine
            .run(CancelToken::default(), |lm, _| {
                lm.encode("fn main() {}").unwrap().len()
            })
            .await;
        assert!(n.unwrap() > 0);
        // A job cancelled before it starts never runs.
        let t = CancelToken::default();
        t.cancel();
        assert!(matches!(
            engine.run(t, |_, _| ()).await,
            Err(EngineError::Cancelled)
        ));
    }

    #[tokio::test]
    async fn a_failed_load_is_reported() {
        let engine = Engine::start();
        engine.load(ModelSource::Dir("/nonexistent/model".into()));
        let e = engine.ready().await.unwrap_err();
        assert!(e.to_string().contains("/nonexistent/model"), "{e}");
        assert!(matches!(
            engine.run(CancelToken::default(), |_, _| ()).await,
            Err(EngineError::NoModel(_))
        ));
    }

    #[test]
    fn caches_evict_least_recent() {
        let mut c = Caches::default();
        for u in ["a", "b", "c", "d"] {
            c.for_document(u).reused = 1;
        }
        c.for_document("a");
        c.for_document("e");
        let names: Vec<&str> = c.entries.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(names, ["c", "d", "a", "e"]);
        assert_eq!(c.for_document("a").reused, 1);
    }
}
