use super::*;
use crate::broker::Message;

fn event(n: usize) -> Arc<Event> {
    Arc::new(Event::new(
        Message::new("s", vec![b'x'; n]),
        1,
        "e-1".into(),
    ))
}

fn queue(messages: usize, bytes: usize, policy: Policy) -> ClientQueue {
    ClientQueue::new(Bound { messages, bytes }, policy)
}

#[test]
fn a_held_queue_is_not_ready_until_its_splice() {
    use futures::FutureExt;
    let q = queue(10, 1 << 20, Policy::DropOldest);
    q.hold();
    q.push(event(10));
    // Ready would hand the writer an empty batch (take() holds events back), and a
    // writer looping on it would spin without ever yielding.
    assert!(q.ready().now_or_never().is_none(), "ready while held");
    assert!(q.take().events.is_empty());
    q.splice(Vec::new(), None);
    assert!(q.ready().now_or_never().is_some(), "ready once spliced");
    assert_eq!(q.take().events.len(), 1);
}

#[test]
fn drop_oldest_keeps_the_message_bound() {
    let q = queue(3, 1 << 20, Policy::DropOldest);
    for _ in 0..3 {
        assert_eq!(q.push(event(10)), Pushed::Queued);
    }
    assert_eq!(q.push(event(10)), Pushed::DroppedOldest(1));
    assert_eq!(q.len().0, 3);
    let b = q.take();
    assert_eq!((b.events.len(), b.dropped), (3, 1));
    assert!(q.is_empty());
    assert_eq!(q.take().dropped, 0, "the gap is reported once");
}

#[test]
fn drop_oldest_keeps_the_byte_bound() {
    let q = queue(1000, 1000, Policy::DropOldest);
    for _ in 0..100 {
        q.push(event(100));
        assert!(q.len().1 <= 1000, "{:?}", q.len());
    }
    // A single event larger than the byte bound still goes through alone.
    assert!(matches!(q.push(event(5000)), Pushed::DroppedOldest(_)));
    assert_eq!(q.len().0, 1);
}

#[test]
fn disconnect_closes_on_overflow() {
    let q = queue(2, 1 << 20, Policy::Disconnect);
    q.push(event(1));
    q.push(event(1));
    assert_eq!(q.push(event(1)), Pushed::Disconnected);
    assert!(q.is_closed());
    assert_eq!(q.push(event(1)), Pushed::AlreadyClosed);
    let b = q.take();
    assert_eq!(b.closed, Some(Closed::SlowConsumer));
    assert!(b.events.is_empty());
}

fn numbered(seq: u64) -> Arc<Event> {
    Arc::new(Event::new(Message::new("s", "x"), seq, format!("e-{seq}")))
}

#[test]
fn splice_puts_replay_first_without_duplicates() {
    let q = queue(100, 1 << 20, Policy::DropOldest);
    for seq in [4, 5, 6] {
        q.push(numbered(seq));
    }
    q.splice(vec![numbered(2), numbered(3), numbered(4)], None);
    let seqs: Vec<u64> = q.take().events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [2, 3, 4, 5, 6]);
    // A replayed event that arrives live afterwards is not queued again.
    q.push(numbered(3));
    q.push(numbered(7));
    let seqs: Vec<u64> = q.take().events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [7]);
    q.splice(Vec::new(), Some("cursor_too_old"));
    assert_eq!(q.take().reset, Some("cursor_too_old"));
}

#[tokio::test]
async fn ready_wakes_on_push() {
    let q = Arc::new(queue(2, 100, Policy::DropOldest));
    let q2 = q.clone();
    let waiter = tokio::spawn(async move { q2.ready().await });
    q.push(event(1));
    tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
        .await
        .expect("ready resolves after a push")
        .unwrap();
}

#[test]
fn a_held_queue_hands_out_nothing_until_the_splice() {
    let q = queue(100, 1 << 20, Policy::DropOldest);
    q.hold();
    assert_eq!(q.push(event(10)), Pushed::Queued);
    assert!(q.take().events.is_empty(), "held back");
    q.splice(Vec::new(), None);
    assert_eq!(q.take().events.len(), 1, "released by the splice");
}
