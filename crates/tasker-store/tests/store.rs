//! The store's behaviour, each test on a real SQLite file and on a real
//! PostgreSQL server.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use common::*;
use serde_json::json;
use tasker_engine::{JournalError, StepOutcome, StepSnapshot, StepState, TaskState, Transition};
use tasker_protocol::StepExecutionError;
use tasker_store::{CancelOutcome, Created, StoreError, TaskFilter};

/// A journal entry as the test compares it: step, from, to, attempt, worker.
type JournalLine<'a> = (Option<i64>, &'a str, &'a str, u32, Option<&'a str>);

on_both_backends!(
    a_created_task_is_running_with_waiting_steps,
    an_idempotency_key_returns_its_task_or_a_conflict_and_stores_nothing_more,
    concurrent_creates_with_one_key_make_one_task,
    committed_transitions_show_in_the_task_and_its_journal,
    a_stale_transition_conflicts_and_nothing_of_its_call_applies,
    a_foreign_owner_is_fenced_off,
    of_concurrent_writers_of_one_step_exactly_one_wins,
    claiming_returns_unfinished_tasks_with_their_steps_and_fences_the_old_owner,
    cancel_requests_report_what_they_found,
    lists_filter_and_page_newest_first,
    purging_deletes_ended_tasks_whole_and_ids_are_never_reused,
    the_orchestrator_id_survives_a_reopen,
    a_store_a_newer_tasker_migrated_is_refused_in_words_that_say_so,
    everything_committed_survives_close_and_reopen,
    a_closed_store_refuses_work_and_commits_what_was_queued,
    concurrent_commits_are_grouped,
    writes_queued_behind_a_commit_go_into_one_transaction,
    a_conflicting_call_does_not_decide_for_later_calls_of_its_group,
);

async fn a_created_task_is_running_with_waiting_steps(db: TestDb) {
    let store = db.open().await;
    let before = now();
    let created = store
        .create_task(new_task("orch-a", context(1), None))
        .await
        .unwrap();
    let Created::New(task) = created else {
        panic!("expected a new task")
    };
    assert_eq!(task.template, template());
    assert_eq!(task.context, context(1));
    assert!(!task.cancel_requested);
    assert!(task.created_at >= before);
    let ids: Vec<i64> = task.steps.iter().map(|s| s.step_id).collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert!(task
        .steps
        .iter()
        .all(|s| s.snapshot == StepSnapshot::waiting()));

    let detail = store.get_task(task.task_id).await.unwrap().unwrap();
    assert_eq!(detail.task_id, task.task_id);
    assert_eq!(detail.workflow, "etl");
    assert_eq!(detail.status, TaskState::Running);
    assert_eq!(detail.context, context(1));
    assert_eq!(detail.started_at, task.created_at);
    assert_eq!(detail.finished_at, None);
    let names: Vec<&str> = detail.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["fetch", "transform", "publish"]);
    assert_eq!(detail.steps[0].handler, "http_get");
    let step_ids: Vec<i64> = detail.steps.iter().map(|s| s.step_id).collect();
    assert_eq!(step_ids, ids);
    for step in &detail.steps {
        assert_eq!(step.state, StepState::Waiting);
        assert_eq!(
            (step.outcome, step.attempts, step.duration_ms),
            (None, 0, 0)
        );
    }
    assert!(store.get_task(task.task_id + 1000).await.unwrap().is_none());

    let journal = store.journal_entries(task.task_id).await.unwrap();
    assert_eq!(journal.len(), 1);
    assert_eq!(
        (journal[0].from_state.as_str(), journal[0].to_state.as_str()),
        ("created", "running")
    );
    assert_eq!(journal[0].step_id, None);
}

async fn an_idempotency_key_returns_its_task_or_a_conflict_and_stores_nothing_more(db: TestDb) {
    let store = db.open().await;
    let first = store
        .create_task(new_task("orch-a", context(1), Some("order-1")))
        .await
        .unwrap();
    let Created::New(task) = first else {
        panic!("expected a new task")
    };

    let again = store
        .create_task(new_task("orch-a", context(1), Some("order-1")))
        .await
        .unwrap();
    assert!(
        matches!(again, Created::Existing { task_id } if task_id == task.task_id),
        "{again:?}"
    );

    let other_body = store
        .create_task(new_task("orch-a", context(2), Some("order-1")))
        .await
        .unwrap_err();
    match other_body {
        StoreError::IdempotencyConflict { key, task_id } => {
            assert_eq!((key.as_str(), task_id), ("order-1", task.task_id));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }

    let page = store.list_tasks(&TaskFilter::default()).await.unwrap();
    assert_eq!(page.tasks.len(), 1);
    assert_eq!(page.tasks[0].idempotency_key.as_deref(), Some("order-1"));
    let detail = store.get_task(task.task_id).await.unwrap().unwrap();
    assert_eq!(detail.context, context(1));
    assert_eq!(store.journal_entries(task.task_id).await.unwrap().len(), 1);
}

async fn concurrent_creates_with_one_key_make_one_task(db: TestDb) {
    let store = db.open().await;
    let mut calls = Vec::new();
    for n in 0..40 {
        let store = store.clone();
        // Every fourth call sends another body under the same key.
        let body = if n % 4 == 3 { context(2) } else { context(1) };
        calls.push(tokio::spawn(async move {
            store
                .create_task(new_task("orch-a", body, Some("shared")))
                .await
        }));
    }
    let mut new = Vec::new();
    let mut existing = Vec::new();
    let mut conflicts = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(Created::New(task)) => new.push(task.task_id),
            Ok(Created::Existing { task_id }) => existing.push(task_id),
            Err(StoreError::IdempotencyConflict { .. }) => conflicts += 1,
            Err(e) => panic!("{e}"),
        }
    }
    // Whichever body came first made the task; the other body conflicts.
    assert_eq!(new.len(), 1, "{new:?}");
    assert!(existing.iter().all(|&id| id == new[0]));
    assert!(
        (existing.len(), conflicts) == (29, 10) || (existing.len(), conflicts) == (9, 30),
        "{} existing, {conflicts} conflicts",
        existing.len()
    );
    let page = store.list_tasks(&TaskFilter::default()).await.unwrap();
    assert_eq!(page.tasks.len(), 1);
}

async fn committed_transitions_show_in_the_task_and_its_journal(db: TestDb) {
    let store = db.open().await;
    let (task_id, ids) = create(&store, "orch-a", context(1)).await;
    let journal = store.journal("orch-a");

    // Dispatch and complete `fetch`; dispatch `transform`, which fails once.
    let waiting = StepSnapshot::waiting();
    let fetch_running = running(&waiting, "exec-1");
    let fetch_done = completed(&fetch_running, "worker-7", json!({"rows": [1, 2, 3]}));
    journal
        .commit(vec![step(task_id, ids[0], &waiting, fetch_running.clone())])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let fetch_done = StepSnapshot {
        ended_at: Some(now()),
        ..fetch_done
    };
    let transform_running = running(&waiting, "exec-1");
    journal
        .commit(vec![
            step(task_id, ids[0], &fetch_running, fetch_done.clone()),
            step(task_id, ids[1], &waiting, transform_running.clone()),
        ])
        .await
        .unwrap();
    let retry_at = now() + chrono::Duration::seconds(30);
    let transform_waiting = retry_wait(&transform_running, "worker-8", retry_at);
    journal
        .commit(vec![step(
            task_id,
            ids[1],
            &transform_running,
            transform_waiting.clone(),
        )])
        .await
        .unwrap();

    let detail = store.get_task(task_id).await.unwrap().unwrap();
    let fetch = &detail.steps[0];
    assert_eq!(fetch.state, StepState::Completed);
    assert_eq!(fetch.outcome, Some(StepOutcome::Completed));
    assert_eq!(fetch.attempts, 1);
    assert_eq!(fetch.worker_id.as_deref(), Some("worker-7"));
    assert_eq!(fetch.output, Some(json!({"rows": [1, 2, 3]})));
    let expected = fetch_done.ended_at.unwrap() - fetch_running.first_dispatched_at.unwrap();
    assert_eq!(fetch.duration_ms, expected.num_milliseconds() as u64);
    assert!(fetch.duration_ms >= 5);
    let transform = &detail.steps[1];
    assert_eq!(transform.state, StepState::RetryWait);
    assert_eq!(transform.outcome, None);
    assert_eq!(transform.next_run_at, Some(retry_at));
    assert_eq!(transform.error, transform_waiting.error);
    assert_eq!(transform.duration_ms, 0);
    assert_eq!(detail.steps[2].state, StepState::Waiting);

    // The task fails: its end shows, with its duration.
    let transform_failed = ended(&transform_waiting, StepState::Failed);
    let publish_blocked = StepSnapshot {
        blocked_by: Some("transform".into()),
        ..ended(&waiting, StepState::Blocked)
    };
    let end = now();
    journal
        .commit(vec![
            step(task_id, ids[1], &transform_waiting, transform_failed),
            step(task_id, ids[2], &waiting, publish_blocked),
            Transition::Task {
                task_id,
                to: TaskState::Failed,
                at: end,
            },
        ])
        .await
        .unwrap();
    let detail = store.get_task(task_id).await.unwrap().unwrap();
    assert_eq!(detail.status, TaskState::Failed);
    assert_eq!(detail.finished_at, Some(end));
    assert_eq!(
        detail.duration_ms,
        (end - detail.started_at).num_milliseconds() as u64
    );
    assert_eq!(detail.steps[1].outcome, Some(StepOutcome::Failed));
    assert_eq!(detail.steps[2].outcome, Some(StepOutcome::Blocked));
    assert_eq!(detail.steps[2].blocked_by.as_deref(), Some("transform"));

    let entries = store.journal_entries(task_id).await.unwrap();
    let lines: Vec<JournalLine> = entries
        .iter()
        .map(|e| {
            (
                e.step_id,
                e.from_state.as_str(),
                e.to_state.as_str(),
                e.attempt,
                e.worker_id.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            (None, "created", "running", 0, None),
            (Some(ids[0]), "waiting", "running", 1, None),
            (Some(ids[0]), "running", "completed", 1, Some("worker-7")),
            (Some(ids[1]), "waiting", "running", 1, None),
            (Some(ids[1]), "running", "retry_wait", 1, Some("worker-8")),
            (Some(ids[1]), "retry_wait", "failed", 1, None),
            (Some(ids[2]), "waiting", "blocked", 0, None),
            (None, "running", "failed", 0, None),
        ]
    );
    assert!(entries.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(entries.iter().all(|e| e.task_id == task_id));
    // The attempt that failed says why on its own line; the step keeps
    // only its latest error, so this is where earlier ones are read.
    let errors: Vec<(&str, Option<&StepExecutionError>)> = entries
        .iter()
        .map(|e| (e.to_state.as_str(), e.error.as_ref()))
        .collect();
    let failed_attempt = transform_waiting.error.as_ref();
    assert_eq!(
        errors,
        [
            ("running", None),
            ("running", None),
            ("completed", None),
            ("running", None),
            ("retry_wait", failed_attempt),
            ("failed", None),
            ("blocked", None),
            ("failed", None),
        ]
    );
}

async fn a_stale_transition_conflicts_and_nothing_of_its_call_applies(db: TestDb) {
    let store = db.open().await;
    let (task_id, ids) = create(&store, "orch-a", context(1)).await;
    let journal = store.journal("orch-a");
    let waiting = StepSnapshot::waiting();
    let first = running(&waiting, "exec-1");
    journal
        .commit(vec![step(task_id, ids[0], &waiting, first.clone())])
        .await
        .unwrap();
    let journal_before = store.journal_entries(task_id).await.unwrap();

    // Stale state: the step is running, not waiting.
    assert_conflict(
        &*journal,
        vec![step(task_id, ids[0], &waiting, running(&waiting, "x"))],
        Some(ids[0]),
    )
    .await;

    // Stale attempt: the right state, an old attempt.
    let old_attempt = StepSnapshot {
        attempt: 0,
        ..first.clone()
    };
    assert_conflict(
        &*journal,
        vec![step(
            task_id,
            ids[0],
            &old_attempt,
            completed(&first, "w", json!(1)),
        )],
        Some(ids[0]),
    )
    .await;

    // A valid transition in the same call as a stale one does not apply either.
    assert_conflict(
        &*journal,
        vec![
            step(task_id, ids[1], &waiting, running(&waiting, "exec-1")),
            step(task_id, ids[0], &waiting, running(&waiting, "exec-1")),
        ],
        Some(ids[0]),
    )
    .await;

    // A step of another task, or no step at all.
    assert_conflict(
        &*journal,
        vec![step(task_id + 1, ids[1], &waiting, running(&waiting, "e"))],
        Some(ids[1]),
    )
    .await;
    assert_conflict(
        &*journal,
        vec![step(task_id, 987_654, &waiting, running(&waiting, "e"))],
        Some(987_654),
    )
    .await;

    let detail = store.get_task(task_id).await.unwrap().unwrap();
    assert_eq!(detail.steps[0].state, StepState::Running);
    assert_eq!(detail.steps[0].attempts, 1);
    assert_eq!(detail.steps[1].state, StepState::Waiting);
    assert_eq!(
        store.journal_entries(task_id).await.unwrap(),
        journal_before
    );

    // A task ends once.
    let end = |to| Transition::Task {
        task_id,
        to,
        at: now(),
    };
    journal
        .commit(vec![end(TaskState::Cancelled)])
        .await
        .unwrap();
    assert_conflict(&*journal, vec![end(TaskState::Complete)], Some(0)).await;
    let detail = store.get_task(task_id).await.unwrap().unwrap();
    assert_eq!(detail.status, TaskState::Cancelled);
    // A task never goes back to running.
    let err = journal
        .commit(vec![end(TaskState::Running)])
        .await
        .unwrap_err();
    assert!(matches!(err, JournalError::Invalid(_)), "{err}");
}

async fn a_foreign_owner_is_fenced_off(db: TestDb) {
    let store = db.open().await;
    let (task_id, ids) = create(&store, "orch-a", context(1)).await;
    let intruder = store.journal("orch-b");
    let waiting = StepSnapshot::waiting();
    assert_conflict(
        &*intruder,
        vec![step(task_id, ids[0], &waiting, running(&waiting, "b"))],
        Some(ids[0]),
    )
    .await;
    assert_conflict(
        &*intruder,
        vec![Transition::Task {
            task_id,
            to: TaskState::Complete,
            at: now(),
        }],
        None,
    )
    .await;
    let detail = store.get_task(task_id).await.unwrap().unwrap();
    assert_eq!(detail.status, TaskState::Running);
    assert_eq!(detail.steps[0].state, StepState::Waiting);
    // The owner itself goes on.
    store
        .journal("orch-a")
        .commit(vec![step(
            task_id,
            ids[0],
            &waiting,
            running(&waiting, "a"),
        )])
        .await
        .unwrap();
}

async fn of_concurrent_writers_of_one_step_exactly_one_wins(db: TestDb) {
    let store = db.open().await;
    let (task_id, ids) = create(&store, "orch-a", context(1)).await;
    let journal = store.journal("orch-a");
    let waiting = StepSnapshot::waiting();
    let mut calls = Vec::new();
    for n in 0..30 {
        let journal = Arc::clone(&journal);
        let to = running(&waiting, &format!("exec-{n}"));
        let transition = step(task_id, ids[0], &waiting, to);
        calls.push(tokio::spawn(async move {
            journal.commit(vec![transition]).await
        }));
    }
    let mut winners = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(()) => winners += 1,
            Err(JournalError::Conflict { step_id }) => assert_eq!(step_id, ids[0]),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(winners, 1);
    let entries = store.journal_entries(task_id).await.unwrap();
    assert_eq!(
        entries.iter().filter(|e| e.step_id == Some(ids[0])).count(),
        1
    );
}

async fn claiming_returns_unfinished_tasks_with_their_steps_and_fences_the_old_owner(db: TestDb) {
    let store = db.open().await;
    let waiting = StepSnapshot::waiting();
    // Held by a crashed orchestrator whose lease ran out.
    let mut expired = new_task("orch-old", context(1), Some("k1"));
    expired.lease = Duration::ZERO;
    let Created::New(created) = store.create_task(expired).await.unwrap() else {
        panic!()
    };
    let (task_id, ids) = (
        created.task_id,
        created.steps.iter().map(|s| s.step_id).collect::<Vec<_>>(),
    );
    let old = store.journal("orch-old");
    let fetch_running = running(&waiting, "exec-old");
    let fetch_done = completed(&fetch_running, "w1", json!({"ok": true}));
    let transform_running = running(&waiting, "exec-old");
    let transform_waiting = retry_wait(
        &transform_running,
        "w2",
        now() + chrono::Duration::seconds(9),
    );
    let transform_again = running(&transform_waiting, "exec-old");
    old.commit(vec![step(task_id, ids[0], &waiting, fetch_running.clone())])
        .await
        .unwrap();
    old.commit(vec![
        step(task_id, ids[0], &fetch_running, fetch_done.clone()),
        step(task_id, ids[1], &waiting, transform_running.clone()),
    ])
    .await
    .unwrap();
    old.commit(vec![step(
        task_id,
        ids[1],
        &transform_running,
        transform_waiting.clone(),
    )])
    .await
    .unwrap();
    // A second task, its middle step waiting out a backoff.
    let mut second = new_task("orch-old", context(2), None);
    second.lease = Duration::ZERO;
    let Created::New(second) = store.create_task(second).await.unwrap() else {
        panic!()
    };
    let s = &second.steps;
    old.commit(vec![step(
        second.task_id,
        s[0].step_id,
        &waiting,
        fetch_running.clone(),
    )])
    .await
    .unwrap();
    // An ended task and a task another live orchestrator holds are not claimed.
    let (done_id, _) = create(&store, "orch-old", context(3)).await;
    old.commit(vec![Transition::Task {
        task_id: done_id,
        to: TaskState::Complete,
        at: now(),
    }])
    .await
    .unwrap();
    let (held_id, _) = create(&store, "orch-live", context(4)).await;
    tokio::time::sleep(Duration::from_millis(5)).await;

    let claimed = store
        .claim_unfinished("orch-new", Duration::from_secs(30))
        .await
        .unwrap();
    let claimed_ids: Vec<i64> = claimed.iter().map(|t| t.task_id).collect();
    assert_eq!(claimed_ids, [task_id, second.task_id]);
    let task = &claimed[0];
    assert_eq!(task.template, template());
    assert_eq!(task.context, context(1));
    assert_eq!(task.created_at, created.created_at);
    assert!(!task.cancel_requested);
    let snapshots: Vec<&StepSnapshot> = task.steps.iter().map(|s| &s.snapshot).collect();
    assert_eq!(snapshots, [&fetch_done, &transform_waiting, &waiting]);
    assert_eq!(
        task.steps.iter().map(|s| s.step_id).collect::<Vec<_>>(),
        ids
    );
    let second_snapshots: Vec<&StepSnapshot> =
        claimed[1].steps.iter().map(|s| &s.snapshot).collect();
    assert_eq!(second_snapshots, [&fetch_running, &waiting, &waiting]);
    assert_eq!(
        claimed[1].steps[0].snapshot.dispatched_by.as_deref(),
        Some("exec-old")
    );

    // The old owner is fenced off; the new one carries on.
    assert_conflict(
        &*old,
        vec![step(
            task_id,
            ids[1],
            &transform_waiting,
            transform_again.clone(),
        )],
        None,
    )
    .await;
    store
        .journal("orch-new")
        .commit(vec![step(
            task_id,
            ids[1],
            &transform_waiting,
            transform_again,
        )])
        .await
        .unwrap();

    // Within its lease nobody else claims them; the holder (restarted) does.
    assert!(store
        .claim_unfinished("orch-other", Duration::from_secs(30))
        .await
        .unwrap()
        .is_empty());
    let again = store
        .claim_unfinished("orch-new", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        again.iter().map(|t| t.task_id).collect::<Vec<_>>(),
        [task_id, second.task_id]
    );
    assert_eq!(again[0].steps[1].snapshot.state, StepState::Running);
    assert_eq!(again[0].steps[1].snapshot.attempt, 2);
    assert_eq!(
        store
            .renew_leases("orch-new", Duration::from_secs(60))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .renew_leases("orch-live", Duration::from_secs(60))
            .await
            .unwrap(),
        1
    );
    let _ = held_id;
}

async fn cancel_requests_report_what_they_found(db: TestDb) {
    let store = db.open().await;
    let (task_id, _) = create(&store, "orch-a", context(1)).await;
    assert_eq!(
        store.request_cancel(task_id + 100).await.unwrap(),
        CancelOutcome::NotFound
    );
    assert_eq!(
        store.request_cancel(task_id).await.unwrap(),
        CancelOutcome::Requested
    );
    assert_eq!(
        store.request_cancel(task_id).await.unwrap(),
        CancelOutcome::Requested
    );
    assert!(
        store
            .get_task(task_id)
            .await
            .unwrap()
            .unwrap()
            .cancel_requested
    );
    let page = store.list_tasks(&TaskFilter::default()).await.unwrap();
    assert!(page.tasks[0].cancel_requested);
    let claimed = store
        .claim_unfinished("orch-a", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(claimed[0].cancel_requested);

    store
        .journal("orch-a")
        .commit(vec![Transition::Task {
            task_id,
            to: TaskState::Cancelled,
            at: now(),
        }])
        .await
        .unwrap();
    assert_eq!(
        store.request_cancel(task_id).await.unwrap(),
        CancelOutcome::Ended(TaskState::Cancelled)
    );
    let (done, _) = create(&store, "orch-a", context(2)).await;
    store
        .journal("orch-a")
        .commit(vec![Transition::Task {
            task_id: done,
            to: TaskState::Complete,
            at: now(),
        }])
        .await
        .unwrap();
    assert_eq!(
        store.request_cancel(done).await.unwrap(),
        CancelOutcome::Ended(TaskState::Complete)
    );
    assert!(
        !store
            .get_task(done)
            .await
            .unwrap()
            .unwrap()
            .cancel_requested
    );
}

async fn lists_filter_and_page_newest_first(db: TestDb) {
    let store = db.open().await;
    let journal = store.journal("orch-a");
    let start = now();
    let mut all = Vec::new();
    for n in 0..7 {
        let mut new = new_task("orch-a", context(n), None);
        if n % 3 == 0 {
            new.workflow = "other".into();
        }
        let Created::New(task) = store.create_task(new).await.unwrap() else {
            panic!()
        };
        all.push(task.task_id);
    }
    // Tasks 1 and 4 complete, with their first step.
    for &n in &[1, 4] {
        let detail = store.get_task(all[n]).await.unwrap().unwrap();
        let id = detail.steps[0].step_id;
        let waiting = StepSnapshot::waiting();
        let r = running(&waiting, "e");
        journal
            .commit(vec![
                step(all[n], id, &waiting, r.clone()),
                step(all[n], id, &r, completed(&r, "w", json!(null))),
                Transition::Task {
                    task_id: all[n],
                    to: TaskState::Complete,
                    at: now(),
                },
            ])
            .await
            .unwrap();
    }
    let ids = |page: &tasker_store::TaskPage| -> Vec<i64> {
        page.tasks.iter().map(|t| t.task_id).collect()
    };
    let newest_first: Vec<i64> = all.iter().rev().copied().collect();

    let page = store.list_tasks(&TaskFilter::default()).await.unwrap();
    assert_eq!(ids(&page), newest_first);
    assert_eq!(page.next_cursor, None);
    let summary = page.tasks.iter().find(|t| t.task_id == all[4]).unwrap();
    assert_eq!((summary.steps_total, summary.steps_completed), (3, 1));
    assert_eq!(summary.status, TaskState::Complete);
    assert!(summary.finished_at.is_some());

    let complete = TaskFilter {
        status: Some(TaskState::Complete),
        ..TaskFilter::default()
    };
    assert_eq!(
        ids(&store.list_tasks(&complete).await.unwrap()),
        [all[4], all[1]]
    );
    let other = TaskFilter {
        workflow: Some("other".into()),
        ..TaskFilter::default()
    };
    assert_eq!(
        ids(&store.list_tasks(&other).await.unwrap()),
        [all[6], all[3], all[0]]
    );
    let both = TaskFilter {
        workflow: Some("etl".into()),
        status: Some(TaskState::Running),
        ..TaskFilter::default()
    };
    assert_eq!(
        ids(&store.list_tasks(&both).await.unwrap()),
        [all[5], all[2]]
    );
    let future = TaskFilter {
        created_since: Some(Utc::now() + chrono::Duration::hours(1)),
        ..TaskFilter::default()
    };
    assert!(store.list_tasks(&future).await.unwrap().tasks.is_empty());
    let since_start = TaskFilter {
        created_since: Some(start),
        ..TaskFilter::default()
    };
    assert_eq!(store.list_tasks(&since_start).await.unwrap().tasks.len(), 7);

    // Pages of 3: 3, 3, 1, each cursor the last id of its page.
    let mut filter = TaskFilter {
        limit: 3,
        ..TaskFilter::default()
    };
    let mut pages = Vec::new();
    loop {
        let page = store.list_tasks(&filter).await.unwrap();
        pages.push(ids(&page));
        match page.next_cursor {
            Some(cursor) => {
                assert_eq!(cursor, page.tasks.last().unwrap().task_id.to_string());
                filter.before_id = Some(cursor.parse().unwrap());
            }
            None => break,
        }
    }
    assert_eq!(
        pages,
        [
            newest_first[0..3].to_vec(),
            newest_first[3..6].to_vec(),
            newest_first[6..].to_vec()
        ]
    );
    // Exactly a page's worth left: no cursor to an empty page.
    let last_six = TaskFilter {
        limit: 6,
        before_id: Some(newest_first[0]),
        ..TaskFilter::default()
    };
    assert_eq!(store.list_tasks(&last_six).await.unwrap().next_cursor, None);
    // Limits are kept within 1..=1000.
    let zero = TaskFilter {
        limit: 0,
        ..TaskFilter::default()
    };
    assert_eq!(store.list_tasks(&zero).await.unwrap().tasks.len(), 1);
}

async fn purging_deletes_ended_tasks_whole_and_ids_are_never_reused(db: TestDb) {
    let store = db.open().await;
    let journal = store.journal("orch-a");
    let (running_id, _) = create(&store, "orch-a", context(1)).await;
    let mut ended_ids = Vec::new();
    let mut last_step = 0;
    for n in 0..3 {
        let (task_id, steps) = create(&store, "orch-a", context(n + 2)).await;
        let waiting = StepSnapshot::waiting();
        journal
            .commit(vec![
                step(task_id, steps[0], &waiting, running(&waiting, "e")),
                Transition::Task {
                    task_id,
                    to: TaskState::Cancelled,
                    at: now(),
                },
            ])
            .await
            .unwrap();
        ended_ids.push(task_id);
        last_step = steps[2];
    }
    let cutoff = now() + chrono::Duration::milliseconds(1);
    // Ended after the cutoff: kept.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (late, _) = create(&store, "orch-a", context(9)).await;
    journal
        .commit(vec![Transition::Task {
            task_id: late,
            to: TaskState::Complete,
            at: now(),
        }])
        .await
        .unwrap();

    assert_eq!(store.purge_ended_before(cutoff).await.unwrap(), 3);
    for id in &ended_ids {
        assert!(store.get_task(*id).await.unwrap().is_none());
        assert!(store.journal_entries(*id).await.unwrap().is_empty());
    }
    assert!(store.get_task(running_id).await.unwrap().is_some());
    assert!(store.get_task(late).await.unwrap().is_some());
    assert_eq!(
        store
            .list_tasks(&TaskFilter::default())
            .await
            .unwrap()
            .tasks
            .len(),
        2
    );
    assert_eq!(store.purge_ended_before(cutoff).await.unwrap(), 0);

    // Purge the newest task too: its ids are still never handed out again.
    assert_eq!(
        store
            .purge_ended_before(now() + chrono::Duration::seconds(1))
            .await
            .unwrap(),
        1
    );
    let (next, steps) = create(&store, "orch-a", context(10)).await;
    assert!(next > late, "task id {next} reused (latest was {late})");
    assert!(steps[0] > last_step + 3, "step id {} reused", steps[0]);
}

async fn the_orchestrator_id_survives_a_reopen(db: TestDb) {
    let store = db.open().await;
    let id = store.orchestrator_id().await.unwrap();
    assert_eq!(id.len(), 32, "{id}");
    assert_eq!(store.orchestrator_id().await.unwrap(), id);
    store.close().await;
    let store = db.open().await;
    assert_eq!(store.orchestrator_id().await.unwrap(), id);
    store.close().await;
}

/// An older build rolled back onto a store a newer one migrated refused
/// it in sqlx's words ("migration 2 was previously applied but is missing
/// in the resolved migrations"); it says what happened and what to do, and
/// writes nothing.
async fn a_store_a_newer_tasker_migrated_is_refused_in_words_that_say_so(db: TestDb) {
    let store = db.open().await;
    store.close().await;
    const FUTURE: &str = "INSERT INTO _sqlx_migrations \
        (version, description, success, checksum, execution_time) \
        VALUES (999, 'from a newer tasker', TRUE, $1, 0)";
    macro_rules! execute {
        ($sql:expr) => {{
            macro_rules! on {
                ($pool:ty) => {{
                    let pool = <$pool>::connect(&db.url).await.unwrap();
                    let query = sqlx::query($sql).bind(vec![0u8]);
                    query.execute(&pool).await.unwrap();
                    pool.close().await;
                }};
            }
            if db.url.starts_with("sqlite:") {
                on!(sqlx::SqlitePool);
            } else {
                on!(sqlx::PgPool);
            }
        }};
    }
    execute!(FUTURE);
    let refused = match tasker_store::Store::open(&db.url).await {
        Err(e) => e,
        Ok(_) => panic!("a store with a newer migration was opened"),
    };
    assert!(
        matches!(refused, StoreError::NewerSchema { applied: 999, .. }),
        "{refused:?}"
    );
    let said = refused.to_string();
    assert!(
        said.contains("migrated by a newer tasker") && said.contains("restore the backup"),
        "{said}"
    );
    // A migration of the same number that differs: another build's.
    execute!("DELETE FROM _sqlx_migrations WHERE version = 999 OR checksum = $1");
    execute!("UPDATE _sqlx_migrations SET checksum = $1 WHERE version = 1");
    let refused = match tasker_store::Store::open(&db.url).await {
        Err(e) => e,
        Ok(_) => panic!("a store with another build's migration was opened"),
    };
    assert!(
        matches!(refused, StoreError::ForeignSchema { version: 1 }),
        "{refused:?}"
    );
}

async fn everything_committed_survives_close_and_reopen(db: TestDb) {
    let store = db.open().await;
    let (task_id, ids) = create(&store, "orch-a", context(1)).await;
    let waiting = StepSnapshot::waiting();
    let r = running(&waiting, "exec-1");
    store
        .journal("orch-a")
        .commit(vec![
            step(task_id, ids[0], &waiting, r.clone()),
            step(
                task_id,
                ids[0],
                &r,
                completed(&r, "w", json!({"a": [1, "b"]})),
            ),
        ])
        .await
        .unwrap();
    store.request_cancel(task_id).await.unwrap();
    let detail = store.get_task(task_id).await.unwrap().unwrap();
    let journal = store.journal_entries(task_id).await.unwrap();
    store.close().await;

    let store = db.open().await;
    let mut reopened = store.get_task(task_id).await.unwrap().unwrap();
    // Only the running duration moved on.
    reopened.duration_ms = detail.duration_ms;
    assert_eq!(reopened, detail);
    assert_eq!(store.journal_entries(task_id).await.unwrap(), journal);
    let claimed = store
        .claim_unfinished("orch-a", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(claimed[0].cancel_requested);
    // New ids continue after the old ones.
    let (next, _) = create(&store, "orch-a", context(2)).await;
    assert!(next > task_id);
    store.close().await;
}

async fn a_closed_store_refuses_work_and_commits_what_was_queued(db: TestDb) {
    let store = db.open().await;
    let (task_id, ids) = create(&store, "orch-a", context(1)).await;
    let mut tasks = vec![(task_id, ids)];
    for n in 0..50 {
        tasks.push(create(&store, "orch-a", context(n)).await);
    }
    let journal = store.journal("orch-a");
    let mut calls = Vec::new();
    for (task_id, ids) in tasks.clone() {
        let journal = Arc::clone(&journal);
        calls.push(tokio::spawn(async move {
            let waiting = StepSnapshot::waiting();
            journal
                .commit(vec![step(
                    task_id,
                    ids[0],
                    &waiting,
                    running(&waiting, "e"),
                )])
                .await
        }));
    }
    tokio::task::yield_now().await;
    store.close().await;
    let mut committed = Vec::new();
    for (call, (task_id, _)) in calls.into_iter().zip(&tasks) {
        match call.await.unwrap() {
            Ok(()) => committed.push(*task_id),
            Err(JournalError::Closed) => {}
            Err(e) => panic!("{e}"),
        }
    }

    assert!(matches!(
        store.get_task(task_id).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(
        store
            .create_task(new_task("orch-a", context(1), None))
            .await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(
        store.request_cancel(task_id).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(store.ping().await, Err(StoreError::Closed)));
    let waiting = StepSnapshot::waiting();
    let err = journal
        .commit(vec![step(
            task_id,
            tasks[0].1[1],
            &waiting,
            running(&waiting, "e"),
        )])
        .await
        .unwrap_err();
    assert!(matches!(err, JournalError::Closed), "{err}");
    store.close().await;

    // What each caller was told is what the store holds.
    let store = db.open().await;
    store.ping().await.unwrap();
    for (task_id, _) in &tasks {
        let detail = store.get_task(*task_id).await.unwrap().unwrap();
        let dispatched = detail.steps[0].state == StepState::Running;
        assert_eq!(dispatched, committed.contains(task_id), "task {task_id}");
    }
    store.close().await;
}

async fn concurrent_commits_are_grouped(db: TestDb) {
    let store = db.open().await;
    let mut tasks = Vec::new();
    for n in 0..100 {
        tasks.push(create(&store, "orch-a", context(n)).await);
    }
    let before = store.commit_stats();
    let journal = store.journal("orch-a");
    let barrier = Arc::new(tokio::sync::Barrier::new(tasks.len()));
    let mut calls = Vec::new();
    for (task_id, ids) in tasks.clone() {
        let journal = Arc::clone(&journal);
        let barrier = Arc::clone(&barrier);
        calls.push(tokio::spawn(async move {
            let waiting = StepSnapshot::waiting();
            let r = running(&waiting, "e");
            barrier.wait().await;
            journal
                .commit(vec![step(task_id, ids[0], &waiting, r.clone())])
                .await?;
            journal
                .commit(vec![step(
                    task_id,
                    ids[0],
                    &r,
                    completed(&r, "w", json!(task_id)),
                )])
                .await
        }));
    }
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let after = store.commit_stats();
    let calls = after.calls - before.calls;
    let commits = after.commits - before.commits;
    assert_eq!(calls, 200);
    assert_eq!(after.transitions - before.transitions, 200);
    assert!(commits < calls / 4, "{commits} commits for {calls} calls");
    for (task_id, _) in &tasks {
        let detail = store.get_task(*task_id).await.unwrap().unwrap();
        assert_eq!(detail.steps[0].output, Some(json!(task_id)));
    }
}

async fn writes_queued_behind_a_commit_go_into_one_transaction(db: TestDb) {
    let store = db.open().await;
    let (blocker, _) = create(&store, "orch-a", context(0)).await;
    let (contested, contested_steps) = create(&store, "orch-a", context(1)).await;
    let mut others = Vec::new();
    for n in 0..50 {
        others.push(create(&store, "orch-a", context(n)).await);
    }
    let before = store.commit_stats();
    let block = WriterBlock::hold(&db, blocker).await;
    let cancel = {
        let store = store.clone();
        tokio::spawn(async move { store.request_cancel(blocker).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;

    let journal = store.journal("orch-a");
    let waiting = StepSnapshot::waiting();
    let commit = |transitions: Vec<Transition>| {
        let journal = Arc::clone(&journal);
        tokio::spawn(async move { journal.commit(transitions).await })
    };
    // 30 dispatches of one step, 50 of distinct steps, and a call whose
    // valid first transition comes with a stale second one.
    let contenders: Vec<_> = (0..30)
        .map(|n| {
            let to = running(&waiting, &format!("exec-{n}"));
            commit(vec![step(contested, contested_steps[0], &waiting, to)])
        })
        .collect();
    let distinct: Vec<_> = others
        .iter()
        .map(|(task_id, ids)| {
            commit(vec![step(
                *task_id,
                ids[0],
                &waiting,
                running(&waiting, "e"),
            )])
        })
        .collect();
    let stale_running = running(&waiting, "e");
    let mixed = commit(vec![
        step(
            contested,
            contested_steps[1],
            &waiting,
            running(&waiting, "e"),
        ),
        step(
            contested,
            contested_steps[2],
            &stale_running,
            completed(&stale_running, "w", json!(1)),
        ),
    ]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.commit_stats().queued < 81 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            store.commit_stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    block.release().await;

    assert_eq!(cancel.await.unwrap().unwrap(), CancelOutcome::Requested);
    let mut winners = 0;
    for call in contenders {
        match call.await.unwrap() {
            Ok(()) => winners += 1,
            Err(JournalError::Conflict { step_id }) => assert_eq!(step_id, contested_steps[0]),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(winners, 1);
    for call in distinct {
        call.await.unwrap().unwrap();
    }
    let err = mixed.await.unwrap().unwrap_err();
    assert!(
        matches!(err, JournalError::Conflict { step_id } if step_id == contested_steps[2]),
        "{err}"
    );

    // The cancel's transaction, then one for everything queued behind it.
    let after = store.commit_stats();
    assert_eq!(after.calls - before.calls, 82);
    assert!(
        after.commits - before.commits <= 2,
        "{before:?} -> {after:?}"
    );
    assert_eq!(after.transitions - before.transitions, 51);
    let detail = store.get_task(contested).await.unwrap().unwrap();
    assert_eq!(detail.steps[0].attempts, 1);
    assert_eq!(detail.steps[1].state, StepState::Waiting);
    let dispatches = store.journal_entries(contested).await.unwrap();
    assert_eq!(dispatches.len(), 2, "{dispatches:?}");
}

async fn a_conflicting_call_does_not_decide_for_later_calls_of_its_group(db: TestDb) {
    let store = db.open().await;
    let (blocker, _) = create(&store, "orch-a", context(0)).await;
    let (task_id, ids) = create(&store, "orch-a", context(1)).await;
    let (x, z) = (ids[0], ids[1]);
    let journal = store.journal("orch-a");
    let waiting = StepSnapshot::waiting();
    let z_running = running(&waiting, "e");
    journal
        .commit(vec![step(task_id, z, &waiting, z_running.clone())])
        .await
        .unwrap();

    let block = WriterBlock::hold(&db, blocker).await;
    let cancel = {
        let store = store.clone();
        tokio::spawn(async move { store.request_cancel(blocker).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let commit = |transitions: Vec<Transition>| {
        let journal = Arc::clone(&journal);
        tokio::spawn(async move { journal.commit(transitions).await })
    };
    // In one group, in this order: P dispatches x; A dispatches x again
    // (a conflict) and also z, which it wrongly believes waiting; B
    // completes z, which does run. Only A conflicts.
    let p = commit(vec![step(task_id, x, &waiting, running(&waiting, "p"))]);
    let wait_queued = |n: u64| {
        let store = store.clone();
        async move {
            while store.commit_stats().queued < n {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    wait_queued(1).await;
    let a = commit(vec![
        step(task_id, x, &waiting, running(&waiting, "a")),
        step(task_id, z, &waiting, running(&waiting, "a")),
    ]);
    wait_queued(2).await;
    let b = commit(vec![step(
        task_id,
        z,
        &z_running,
        completed(&z_running, "w", json!("z")),
    )]);
    wait_queued(3).await;
    block.release().await;

    cancel.await.unwrap().unwrap();
    p.await.unwrap().unwrap();
    let err = a.await.unwrap().unwrap_err();
    assert!(
        matches!(err, JournalError::Conflict { step_id } if step_id == x),
        "{err}"
    );
    b.await.unwrap().unwrap();
    let detail = store.get_task(task_id).await.unwrap().unwrap();
    assert_eq!(detail.steps[0].state, StepState::Running);
    assert_eq!(detail.steps[1].output, Some(json!("z")));
}
