//! `tasker bench`'s single-step round trips: tasker in both placements
//! beside the raw echoes, each a [`Probe`], sampled interleaved.
//!
//! Sampled one after the other, the probes met different machines: in one
//! run the raw echo happened to keep both its ends on one vCPU and took
//! 14 µs a round trip, in the next 82 µs, and tasker's ratio to it swung
//! from 1.0× to 7× with nothing in tasker changed. Taken in rounds, every
//! probe in turn, a change in the machine's state falls on all of them
//! alike, and the ratios within one run mean what they say.

use std::collections::BTreeMap;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::Result;
use tasker_protocol::{codec, OrchestratorMessage, StepBatchRequest, WorkerMessage};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

use crate::bench::{messages, noop_steps, threads_use, EchoPeer, RawEcho, System, ThreadUse};

/// Rounds the samples are split into; each round takes every probe in
/// turn, starting with the next one each round.
pub(crate) const ROUNDS: usize = 20;

/// Round trips each probe makes at the start of a round before it is timed:
/// the first after a switch pay for the other probes' threads having run
/// last, and would charge that to whichever probe happens to follow which.
const WARM_TRIPS: usize = 10;

/// One way of making a single-step round trip.
pub(crate) enum Probe {
    /// A ROUTER/DEALER echo of the bodies, unparsed (see [`RawEcho`]).
    Echo(RawEcho, [Vec<u8>; 2]),
    /// The echo with both ends decoding and encoding the bodies, as any
    /// JSON system must: the floor of a round trip with no hand-over.
    EchoJson(RawEcho, Box<OrchestratorMessage>),
    /// The same echo with its ROUTER on a thread of its own, as tasker's
    /// I/O thread is (see [`Relay`]).
    Relayed(Relay),
    /// tasker: an executor and a worker, one step per batch.
    System(Box<System>),
}

impl Probe {
    /// The raw echo with its echoing end where `peer` says.
    pub(crate) fn echo(peer: EchoPeer) -> Result<Self> {
        let (request, response) = messages(1);
        let request = codec::encode(&request)?;
        Ok(Probe::Echo(
            RawEcho::start_in(response, false, peer)?,
            request,
        ))
    }

    /// The echo whose ends decode and encode the bodies, the echoing end
    /// where `peer` says.
    pub(crate) fn echo_json(peer: EchoPeer) -> Result<Self> {
        let (request, response) = messages(1);
        Ok(Probe::EchoJson(
            RawEcho::start_in(response, true, peer)?,
            Box::new(request),
        ))
    }

    /// `trips` timed round trips after [`WARM_TRIPS`] untimed ones.
    fn round(&mut self, runtime: &Runtime, trips: usize) -> Result<Vec<Duration>> {
        let mut out = Vec::with_capacity(trips);
        match self {
            Probe::Echo(echo, request) => {
                for i in 0..WARM_TRIPS + trips {
                    let t = Instant::now();
                    echo.send(request)?;
                    echo.recv()?;
                    if i >= WARM_TRIPS {
                        out.push(t.elapsed());
                    }
                }
            }
            Probe::EchoJson(echo, request) => {
                for i in 0..WARM_TRIPS + trips {
                    let t = Instant::now();
                    echo.send(&codec::encode(&**request)?)?;
                    let reply: WorkerMessage = codec::decode(&echo.recv()?, usize::MAX)?;
                    std::hint::black_box(reply);
                    if i >= WARM_TRIPS {
                        out.push(t.elapsed());
                    }
                }
            }
            Probe::Relayed(relay) => runtime.block_on(async {
                for i in 0..WARM_TRIPS + trips {
                    let t = Instant::now();
                    relay.trip().await?;
                    if i >= WARM_TRIPS {
                        out.push(t.elapsed());
                    }
                }
                anyhow::Ok(())
            })?,
            Probe::System(sys) => runtime.block_on(async {
                for i in 0..WARM_TRIPS + trips {
                    let t = Instant::now();
                    sys.executor
                        .execute_step_batch(StepBatchRequest::new("lat", noop_steps(1)))
                        .await?;
                    if i >= WARM_TRIPS {
                        out.push(t.elapsed());
                    }
                }
                anyhow::Ok(())
            })?,
        }
        Ok(out)
    }
}

/// The raw echo's ROUTER on a thread of its own, as the orchestrator's
/// socket is: the caller, a task, hands each request to that thread
/// through a queue and a doorbell and is woken with the reply. Beside the
/// raw echo it prices the two thread hand-overs tasker's design adds, with
/// none of tasker's own work.
pub(crate) struct Relay {
    asks: Option<mpsc::Sender<oneshot::Sender<()>>>,
    bell: Arc<tasker_transport::Doorbell>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Relay {
    /// A relayed raw echo, its echoing end where `peer` says.
    pub(crate) fn start(peer: EchoPeer) -> Result<Self> {
        let (request, response) = messages(1);
        let request = codec::encode(&request)?;
        let echo = RawEcho::start_in(response, false, peer)?;
        let bell = Arc::new(tasker_transport::Doorbell::new()?);
        let (asks, asked) = mpsc::channel::<oneshot::Sender<()>>();
        let relay_bell = Arc::clone(&bell);
        let thread = std::thread::spawn(move || -> Result<()> {
            let mut waiting = std::collections::VecDeque::new();
            loop {
                let items = [
                    tasker_transport::Waitable::Socket(&echo.router, zmq::POLLIN),
                    tasker_transport::Waitable::Fd(relay_bell.fd()),
                ];
                let ready = tasker_transport::wait(&items, -1)?;
                if ready[1] {
                    relay_bell.drain();
                }
                loop {
                    match asked.try_recv() {
                        Ok(reply) => {
                            echo.send(&request)?;
                            waiting.push_back(reply);
                        }
                        Err(mpsc::TryRecvError::Empty) => break,
                        Err(mpsc::TryRecvError::Disconnected) => return Ok(()),
                    }
                }
                if ready[0] {
                    while echo.router.recv_multipart(zmq::DONTWAIT).is_ok() {
                        if let Some(reply) = waiting.pop_front() {
                            let _ = reply.send(());
                        }
                    }
                }
            }
        });
        Ok(Self {
            asks: Some(asks),
            bell,
            thread: Some(thread),
        })
    }

    async fn trip(&self) -> Result<()> {
        let (reply, replied) = oneshot::channel();
        self.asks
            .as_ref()
            .expect("asks live until drop")
            .send(reply)?;
        self.bell.ring();
        Ok(replied.await?)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The relay thread returns once its queue is closed and it is woken.
        self.asks = None;
        self.bell.ring();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `samples` timed round trips of each probe, interleaved in [`ROUNDS`]
/// rounds; the samples in the probes' order. With `TASKER_BENCH_THREADS`
/// set, prints per probe and round trip what each thread of this process
/// used while that probe ran.
pub(crate) fn interleaved(
    probes: &mut [(String, Probe)],
    samples: usize,
    runtime: &Runtime,
) -> Result<Vec<Vec<Duration>>> {
    let per_round = samples.div_ceil(ROUNDS).max(1);
    let mut out = vec![Vec::with_capacity(per_round * ROUNDS); probes.len()];
    let mut used = vec![BTreeMap::<String, ThreadUse>::new(); probes.len()];
    for round in 0..ROUNDS {
        for k in 0..probes.len() {
            let which = (round + k) % probes.len();
            let before = threads_use();
            out[which].extend(probes[which].1.round(runtime, per_round)?);
            for (name, now) in threads_use() {
                let was = before.get(&name).copied().unwrap_or_default();
                let sum = used[which].entry(name).or_default();
                sum.cpu += now.cpu.saturating_sub(was.cpu);
                sum.sleeps += now.sleeps.saturating_sub(was.sleeps);
                sum.preempted += now.preempted.saturating_sub(was.preempted);
            }
        }
    }
    if std::env::var_os("TASKER_BENCH_THREADS").is_some() {
        // The warm trips ran too, and used what they used.
        let trips = ((per_round + WARM_TRIPS) * ROUNDS) as f64;
        for ((label, _), used) in probes.iter().zip(&used) {
            eprintln!("{label}: per round trip by thread");
            for (name, sum) in used {
                eprintln!(
                    "  {name:<24} {:6.1} us  {:5.2} sleeps  {:5.2} preempted",
                    sum.cpu.as_secs_f64() * 1e6 / trips,
                    sum.sleeps as f64 / trips,
                    sum.preempted as f64 / trips,
                );
            }
        }
    }
    Ok(out)
}

/// The `p` quantile of `samples`, in microseconds.
pub(crate) fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i].as_secs_f64() * 1e6
}
