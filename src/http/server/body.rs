//! Request bodies that must keep arriving: time spent waiting for the client is counted in
//! windows, and a window that brings too few bytes cuts the body. Time the handler spends not
//! reading (authenticating, writing a file) does not count, so large uploads at a fair rate pass
//! and trickled ones do not.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// How fast a request body must arrive.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// The length of a window, in time spent waiting for the client.
    pub window: Duration,
    /// Bytes each full window must bring (at least 1).
    pub min_bytes: u64,
}

impl Progress {
    pub fn new(window: Duration, min_bytes_per_sec: u64) -> Self {
        let min_bytes = (min_bytes_per_sec as f64 * window.as_secs_f64()).ceil() as u64;
        Self {
            window,
            min_bytes: min_bytes.max(1),
        }
    }
}

/// The error a cut body reports to whoever reads it.
#[derive(Debug, thiserror::Error)]
#[error("the request body arrived too slowly")]
pub struct TooSlow;

pub struct ProgressBody<B> {
    inner: B,
    progress: Progress,
    /// Bytes received in the current window.
    bytes: u64,
    /// Time waited in the current window before the current wait.
    waited: Duration,
    /// Since when the current wait (inner body pending) lasts.
    waiting_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    /// Set when the body was cut, so that the response can say why.
    cut: Arc<AtomicBool>,
    done: bool,
}

impl<B> ProgressBody<B> {
    pub fn new(inner: B, progress: Progress, cut: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            progress,
            bytes: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            timer: None,
            cut,
            done: false,
        }
    }
}

impl<B> Body for ProgressBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(since) = this.waiting_since.take() {
                        this.waited += since.elapsed();
                    }
                    if let Some(data) = frame.data_ref() {
                        this.bytes += data.len() as u64;
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => {}
            }
            let since = *this.waiting_since.get_or_insert_with(Instant::now);
            let window_end = since + this.progress.window.saturating_sub(this.waited);
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(window_end)));
            if timer.deadline() != window_end {
                timer.as_mut().reset(window_end);
            }
            ready!(timer.as_mut().poll(cx));
            // A whole window of waiting has passed.
            if this.bytes < this.progress.min_bytes {
                this.done = true;
                this.cut.store(true, Ordering::Relaxed);
                return Poll::Ready(Some(Err(Box::new(TooSlow))));
            }
            this.bytes = 0;
            this.waited = Duration::ZERO;
            this.waiting_since = Some(window_end);
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether a body of this request was cut for arriving too slowly.
pub fn was_cut(flag: &AtomicBool) -> bool {
    flag.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn trickle(
        every: Duration,
        chunks: usize,
        size: usize,
    ) -> impl Body<Data = Bytes, Error = std::convert::Infallible> + Unpin {
        let stream = futures::stream::unfold(0, move |i| async move {
            if i == chunks {
                return None;
            }
            tokio::time::sleep(every).await;
            Some((
                Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(vec![b'x'; size]))),
                i + 1,
            ))
        });
        StreamBody::new(Box::pin(stream))
    }

    #[tokio::test]
    async fn a_body_at_a_fair_rate_passes_however_long_it_takes() {
        // 300 ms windows at 100 B/s: 30 B per window; 500 B every 20 ms is far more.
        let cut = Arc::new(AtomicBool::new(false));
        let body = ProgressBody::new(
            trickle(Duration::from_millis(20), 50, 500),
            Progress::new(Duration::from_millis(300), 100),
            cut.clone(),
        );
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes.len(), 25_000);
        assert!(!was_cut(&cut));
    }

    #[tokio::test]
    async fn a_trickled_body_is_cut_after_one_window() {
        // 1 B every 20 ms against 1000 B/s: a 300 ms window needs 300 B and gets at most 15.
        let cut = Arc::new(AtomicBool::new(false));
        let body = ProgressBody::new(
            trickle(Duration::from_millis(20), 1000, 1),
            Progress::new(Duration::from_millis(300), 1000),
            cut.clone(),
        );
        let started = Instant::now();
        let err = body.collect().await.unwrap_err();
        assert!(err.is::<TooSlow>(), "{err}");
        assert!(was_cut(&cut));
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(15), "{took:?}");
    }

    #[tokio::test]
    async fn with_no_minimum_rate_only_silence_for_a_whole_window_cuts() {
        let cut = Arc::new(AtomicBool::new(false));
        let body = ProgressBody::new(
            trickle(Duration::from_millis(10), 20, 1),
            Progress::new(Duration::from_secs(5), 0),
            cut.clone(),
        );
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 20);
        assert!(!was_cut(&cut));
        let body = ProgressBody::new(
            trickle(Duration::from_secs(10), 5, 1),
            Progress::new(Duration::from_millis(200), 0),
            cut.clone(),
        );
        assert!(body.collect().await.is_err());
        assert!(was_cut(&cut));
    }

    #[tokio::test]
    async fn time_the_reader_spends_elsewhere_does_not_count() {
        let cut = Arc::new(AtomicBool::new(false));
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, std::convert::Infallible>(Frame::data(b)), rx))
        });
        let mut body = ProgressBody::new(
            StreamBody::new(Box::pin(stream)),
            Progress::new(Duration::from_millis(100), 1000),
            cut.clone(),
        );
        for _ in 0..3 {
            tx.send(Bytes::from_static(b"abc")).await.unwrap();
        }
        drop(tx);
        // The reader is busy for ten windows; the client had sent everything long before.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut n = 0;
        while let Some(frame) = body.frame().await {
            n += frame.unwrap().into_data().unwrap().len();
        }
        assert_eq!(n, 9);
        assert!(!was_cut(&cut));
    }
}
