//! A job's notice (`NOTIFY_URL`, see `notify`), sent on its own task when the job ends: the job
//! never waits for its receiver.
use crate::jobs::context::JobContext;

/// Send job `id`'s notice, if notices are configured.
pub fn send(ctx: &JobContext, id: &str) {
    let Some(notifier) = ctx.notifier.clone() else { return };
    let (store, id, stop) = (ctx.store.clone(), id.to_string(), ctx.jobs.shutdown.clone());
    ctx.jobs
        .tracker
        .spawn(async move { crate::notify::deliver_and_keep(&notifier, &*store, &id, &stop).await });
}
