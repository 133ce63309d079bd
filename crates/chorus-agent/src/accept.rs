//! Accepting connections on the local listeners without ever spinning: after an error (out of
//! descriptors, most often) the loop waits as `chorus_core::admission::AcceptBackoff` says
//! and logs at most one line per interval.

use std::future::Future;

use chorus_core::admission::AcceptBackoff;

/// Accepts the next connection on the listener `name` (for the log), waiting after errors.
pub async fn accept_next<C, F, Fut>(
    name: &'static str,
    backoff: &mut AcceptBackoff,
    mut accept: F,
) -> C
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::io::Result<C>>,
{
    loop {
        match accept().await {
            Ok(connection) => {
                backoff.succeeded();
                return connection;
            }
            Err(e) => {
                let step = backoff.failed(tokio::time::Instant::now().into_std());
                if let Some(errors) = step.log {
                    tracing::warn!(
                        listener = name,
                        error = %e,
                        errors,
                        retry_in_ms = step.wait.as_millis() as u64,
                        "cannot accept connections; waiting before trying again"
                    );
                }
                tokio::time::sleep(step.wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_failing_accept_is_retried_a_few_times_a_second_not_in_a_loop() {
        let mut backoff = AcceptBackoff::new();
        let mut attempts = 0u32;
        let accept = || {
            attempts += 1;
            let n = attempts;
            async move {
                if n <= 30 {
                    Err(std::io::Error::other("Too many open files"))
                } else {
                    Ok(n)
                }
            }
        };
        let started = tokio::time::Instant::now();
        let accepted = accept_next("test", &mut backoff, accept).await;
        assert_eq!(accepted, 31);
        // 10 + 20 + .. + 640 ms, then 1 s for each of the remaining 23 errors.
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(1270 + 23 * 1000),
            "{waited:?}"
        );
        assert!(waited < Duration::from_secs(26), "{waited:?}");
    }
}
