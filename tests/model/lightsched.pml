/* lightsched.pml -- an exhaustive model of lightsched's lease, fencing and
 * slot protocol, checked by spin: `python -m tests.model.verify` (make verify).
 * Split in three files: this one (configuration, state, properties, time),
 * redis.pml (Redis, its scripts and faults), replica.pml (elector, runtime,
 * worker threads, the run-job CLI). tests/model/README.md maps every action
 * to the code it stands for.
 *
 * FIX=1 is the protocol with the fixes (lease_id fence, idempotent scripts,
 * WAIT after claims, occupancy by threads, manual runs through the leader,
 * plus two repairs this model found necessary: FIX_MCN_WAIT, FIX_INITMARK);
 * FIX=0 is the protocol as at commit be574f8; MUT=1..7 are known-bad mutants
 * of FIX=1 (a)..(g). One process of atomic steps (d_step): a Lua script is one
 * step, as Redis runs it; a replica step is one decision of its elector or
 * runtime.
 *
 * Guarantees of a check that verifies: in every behaviour within the scope
 * below, each property the check enables holds:
 *   P_excl      two replicas never both believe they lead (Elector.is_leader),
 *               given drift of at most TTL - RD and no lost lease write
 *               (WAIT 1, or WAIT 0 without failover).
 *   P_fence     a fenced write lands only while the leader key of the current
 *               primary holds exactly its writer's lease; both WAIT settings.
 *   P_once      WAIT 1: a slot runs at most once, so does a manual request.
 *   P_once_history  WAIT 0: a slot (request) runs again only after a failover
 *               or empty restart lost its claim: at most once per data history.
 *   P_cancel    WAIT 1: a request its requester reported cancelled never runs.
 *   P_serial    at most one run of a job at a time in a replica (a run lasts
 *               until its thread returns), and no manual run beside a
 *               scheduled run of the same term.
 *   P_tokens    every token minted is above every token a replica accepted, and
 *               none is accepted twice: across failovers with WAIT 1, across
 *               empty restarts unless the mint's Redis TIME is not above the
 *               largest token minted before the restart (then the floor
 *               cannot help: TIME stepped back by more than the restart took,
 *               or tokens ran ahead of TIME).
 *   P_accounted a slot refused as 'claimed' was settled by another claimant
 *               (never by our own earlier claim); no slot runs before its time.
 *   P_live      LIVE runs: once faults stop at FW and replicas act promptly,
 *               some replica leads from FW + DL on, and every slot is run,
 *               counted missed, coalesced or claimed-then-interrupted at most
 *               LS ticks after it fell due (or after FW).
 *
 * Time: integer ticks, one tick = one retry period; TTL 4, renew deadline 3.
 * Constants are integers, so integer time loses no behaviour of these
 * comparisons (digitization). Key expiry runs on real time. A replica's
 * monotonic clock may drift by one tick (the TTL - RD margin; real drift is
 * ppm); its wall clock may step by WJ and be corrected later; Redis TIME
 * (token floor, 'future') may step back by TSTEP at a failover or restart and
 * has tick resolution, so two mints in one tick see one TIME (this makes
 * token repeats easier to reach than with milliseconds, never harder).
 * Time passes only when nothing is due: Redis has run every command sent,
 * the replica applied the primary's writes, every reply was taken, each
 * leader renewed and fired its due slots, short runs returned. Everything
 * slower is a fault, bounded in number but not in length: a pause (the
 * replica takes no step), a stuck command, a lost reply (the command stays
 * on the dead connection and runs before or after its re-send, or never), a
 * WAIT timeout, a long run. A sent command runs before anything else happens
 * unless a fault hits it; this removes only orderings a stuck command gives.
 *
 * Scope, and why it suffices (small-scope argument):
 * - Two replicas. Every property relates two terms or two runs (a stale
 *   holder and the current one; two claims of a slot; two threads); a
 *   replica that lost a term contends again with a fresh lease_id, so two
 *   replicas realise any sequence of terms; a third would only add standbys
 *   whose attempts the other two already make. A crash is a pause that never
 *   ends (what a crashed process sent still runs in Redis).
 * - One job: jobs share only the lease; their keys, claims and queues are
 *   independent. Slots every PER = 2 ticks, NS = 3 (5 in LIVE runs); the
 *   horizon H (6 or 7, 14 in LIVE runs) holds two full lease terms and a
 *   takeover after expiry, which every known hole needs at most.
 * - Faults: each kind at most once per run, 3 to 6 kinds per check (all of
 *   them at once is out of reach). The checks group the kinds that can
 *   interact on the property they check; every known hole of today's
 *   protocol needs at most one fault of each kind, and the shortest
 *   counterexamples use one or two. A second fault of a kind repeats a
 *   situation the first one already creates from a fresh state.
 * - Standbys attempt only when the key is absent or holds one of their own
 *   unanswered attempts (an attempt finding it held by another changes
 *   nothing); a paused replica resumes, and clocks step, at tick boundaries,
 *   at most one such event per boundary.
 * - Reachability probes (REACH = 1..13) show the key events of the fixed
 *   protocol happen within the scope of the checks that verify it.
 *
 * Does not guarantee: anything outside this scope (three replicas, several
 * faults of one kind, more than 6 kinds together, longer horizons); a Redis
 * clock that runs fast (shorter TTLs) is not modelled; writes to systems
 * other than this Redis are not fenced. Today's model of two threads of one
 * job at once keeps only the newest thread's fence (the hole is found before).
 */

/* ---- Lua scripts this model stands for (python -m tests.model.digests) ---- */
/* lua leader.redis_store:ACQUIRE_LUA sha256=e0842738b95517e18ea9c44ee37d45481e6f65067ab7c5162d776cd02e3416a5 */
/* lua leader.redis_store:RENEW_LUA sha256=3131f81116a7661d367339c7c1726665afa8c215aeb1690e7bf8278a457004ca */
/* lua leader.redis_store:RELEASE_LUA sha256=d64e9e7edf50aab970b452eb1137648bb992a89b209812acc771efbdddf669ae */
/* lua leader.fence:FENCE_CHECK_LUA sha256=3c01e939052bc33cc62e3fd91f33ecf763e46d89b8fcf9fe70ce1227f172be01 */
/* lua scheduler.slots:CLAIM_SLOT_LUA sha256=e5f397c267c613e8e6d731318ddb707f1f6d58a41d3f1d2d272c6224b24ab403 */
/* lua scheduler.slots:RECORD_RUN_LUA sha256=47faf72fb3e2938ad7fb171ef6e8d4aabfa50a2f9e203e385b7e521d524ecf9f */
/* lua scheduler.slots:SET_NEXT_LUA sha256=7a4808a843797628af958116e379f3a476e361dc37693b4de57c57c50505a35d */
/* lua scheduler.fencing:FENCED_SET_LUA sha256=6e23706d3e47027878235475e2f8e88660ff214cc531103d1d189d7bad68991f */
/* lua scheduler.fencing:FENCED_UNLINK_LUA sha256=69e79110ac95305b2ee5fe4897f3d47f07fb2a60f573a5c884c36b6cebc8543b */
/* lua scheduler.fencing:FENCED_XADD_LUA sha256=9509d0beb3f1068f94a8e1ab500b72ec6a98fbfb40911374dc81e528261ca88b */
/* lua scheduler.requests:ENQUEUE_REQUEST_LUA sha256=3fa70912d950484f99d4499256230f1598c0ff8f1b768a4b4a0e12c05042ec23 */
/* lua scheduler.requests:CLAIM_REQUEST_LUA sha256=b7578515818b4771f3280d42c8031f066662856c84d1037b22186b9418fa5dfe */
/* lua scheduler.requests:FINISH_REQUEST_LUA sha256=96671809ba8cf8887389f0da1e472bb146412bbe58f745664b409428ea693ee0 */
/* lua scheduler.requests:CANCEL_REQUEST_LUA sha256=4d80aeaafad8f0c763ea711da4315a3691632e7c1da38c589bf7ef56bf14016d */
/* ---- end of Lua scripts ---- */

/* ====================================================================== */
/* configuration: every switch is a -D of `spin -a` (tests/model/verify.py) */
/* ====================================================================== */

#ifndef FIX
#define FIX 1          /* 1: the protocol after the fixes; 0: as it is today */
#endif
#ifndef MUT
#define MUT 0          /* known-bad mutants of the fixed protocol: 1..7 = (a)..(g) */
#endif
#ifndef WAITN
#define WAITN 1        /* WAIT_REPLICAS */
#endif

#define MUT_A (MUT == 1)   /* claims not followed by WAIT */
#define MUT_B (MUT == 2)   /* the fence compares the token number only */
#define MUT_C (MUT == 3)   /* no renew deadline: belief lasts the TTL */
#define MUT_D (MUT == 4)   /* tokens minted without the TIME floor */
#define MUT_E (MUT == 5)   /* no high-water mark: resume from the wall clock */
#define MUT_F (MUT == 6)   /* claims not idempotent for their caller */
#define MUT_G (MUT == 7)   /* ACQUIRE's own-attempt path does not write */

/* the fixes, one switch each */
#define FIX_IDFENCE      (FIX && !MUT_B)   /* fence on (token, lease_id) */
#define FIX_ACQ_SELF     (FIX)             /* ACQUIRE recognises its own attempt (PEXPIRE) */
#define FIX_CLAIM_IDEM   (FIX && !MUT_F)   /* CLAIM idempotent for its caller */
#define FIX_CLAIM_WAIT   (FIX && !MUT_A)   /* WAIT after every claim */
#define FIX_FUTURE       (FIX)             /* CLAIM refuses slots ahead of Redis TIME */
#define FIX_FW_WAIT      (FIX)             /* WAIT after fenced writes */
#define FIX_RENEW_REL    (FIX)             /* unreplicated renew: step down and release */
#define FIX_OCCUPY       (FIX)             /* a run occupies its job until its thread returns */
#define FIX_MANUAL       (FIX)             /* manual runs are requests the leader claims */
#ifndef FIX_MCN_WAIT
#define FIX_MCN_WAIT     (FIX)             /* WAIT after the cancel of a manual request (proposed) */
#endif
#ifndef FIX_INITMARK
#define FIX_INITMARK     (FIX)             /* with no slot claimed yet, resume from next_run (proposed) */
#endif
#define NO_DEADLINE      (MUT_C)
#define NO_TIMEFLOOR     (MUT_D)
#define NO_MARK          (MUT_E)

/* which parts of the system a run includes */
#ifndef F_JOBS
#define F_JOBS 1       /* the runtime: slots, claims, runs, worker threads */
#endif
#ifndef F_WRITER
#define F_WRITER 0     /* without the runtime: a generic stale-capable fenced writer */
#endif
#ifndef F_MANUAL
#define F_MANUAL 0     /* manual runs (run-job) */
#endif
#ifndef LIVE
#define LIVE 0         /* faults stop at FW, then every replica acts promptly */
#endif

/* properties checked in this run */
#ifndef P_EXCL
#define P_EXCL 0
#endif
#ifndef P_FENCE
#define P_FENCE 0
#endif
#ifndef P_ONCE
#define P_ONCE 0
#endif
#ifndef P_ONCE_HIST
#define P_ONCE_HIST 0
#endif
#ifndef P_CANCEL
#define P_CANCEL 0
#endif
#ifndef P_SERIAL
#define P_SERIAL 0
#endif
#ifndef P_TOKENS
#define P_TOKENS 0
#endif
#ifndef P_ACCOUNTED
#define P_ACCOUNTED 0
#endif
#ifndef P_LIVE
#define P_LIVE 0
#endif

/* fault budgets (per run) */
#ifndef MAXFO
#define MAXFO 0        /* failovers */
#endif
#ifndef MAXRS
#define MAXRS 0        /* empty restarts */
#endif
#ifndef MAXTS
#define MAXTS 0        /* Redis TIME steps back (at a failover or restart) */
#endif
#ifndef MAXLR
#define MAXLR 0        /* lost replies */
#endif
#ifndef MAXDR
#define MAXDR 0        /* monotonic clock drift events (one tick each) */
#endif
#ifndef MAXWJ
#define MAXWJ 0        /* wall clock steps */
#endif
#ifndef MAXHO
#define MAXHO 0        /* graceful handoffs */
#endif
#ifndef MAXMR
#define MAXMR 0        /* manual run requests */
#endif
#ifndef MAXPA
#define MAXPA 0        /* process pauses (SIGSTOP, GC, a stalled event loop), any length */
#endif
#ifndef MAXST
#define MAXST 0        /* commands stuck in the network or a slow Redis, any length */
#endif
#ifndef MAXLG
#define MAXLG 0        /* runs that outlast the tick they started in (long runs) */
#endif
#ifndef MAXWT
#define MAXWT 0        /* WAITs that time out (a slow or unreachable Redis replica) */
#endif

/* scope, in ticks */
#ifndef H
#define H 8            /* horizon */
#endif
#define TTL 4          /* lease_ttl */
#define RD 3           /* renew_deadline */
#define RP 1           /* retry_period */
#ifndef PER
#define PER 2          /* the job's period */
#endif
#ifndef NS
#define NS 3           /* slots 1..NS fire at wall time k*PER */
#endif
#define GRACE 5        /* misfire_grace_time >= TTL + RP (settings refuse less) */
#define FB 0           /* CLAIM refuses a slot more than FB ahead of Redis TIME */
#ifndef TSTEP
#define TSTEP 2        /* how far Redis TIME steps back */
#endif
#ifndef WJ
#define WJ 2           /* how far a wall clock steps (forward or back) */
#endif
#ifndef FW
#define FW 4           /* LIVE: faults and pauses only before this tick */
#endif
#ifndef DL
#define DL 5           /* LIVE: a leader from FW + DL on (TTL + RP: a lease nobody uses may linger a TTL) */
#endif
#ifndef LS
#define LS 8           /* LIVE: a slot is settled LS ticks after it fell due (or after FW) */
#endif

#define NR 2
#define MAXAID 6
#if MAXLR > 0
#define NORPH MAXLR
#else
#define NORPH 1
#endif

/* ====================================================================== */
/* state                                                                  */
/* ====================================================================== */

#define E_IDLE 0
#define E_ACQ  1
#define E_LEAD 2
#define E_ADO  3

#define J_OFF    0
#define J_IDLE   1
#define J_CLAIM  2
#define J_RUN    3
#define J_RETRY  4
#define J_MCLAIM 5

#define K_ACQ 1
#define K_REN 2
#define K_ADO 3
#define K_REL 4
#define K_CLM 5
#define K_FW  6
#define K_MRQ 7
#define K_MCN 8
#define K_MCL 9

#define S_FREE 0
#define S_Q    1
#define S_RDY  2
#define S_ERR  3

#define R_OK      1
#define R_NO      2
#define R_HELD    3
#define R_FENCED  4
#define R_CLAIMED 5
#define R_FUTURE  6
#define R_ERR     7
#define R_GONE    8
#define R_CANC    9

#define M_NONE    0
#define M_PEND    1
#define M_CLAIMED 2
#define M_CANC    3

#define C_IDLE   0
#define C_SENT   1
#define C_STORED 2
#define C_CANCEL 3
#define C_DONE   4

byte now;
bit  prim;             /* index of the primary node; the other is its replica */
bit  dirty;            /* the primary holds writes the replica has not applied */
byte toff;             /* Redis TIME = now - toff */

/* Redis data, per node: lease key (lease id, token, expiry tick), token key,
 * the job hash (last_slot, claimed_fence, next_run), the manual request */
byte lk_aid[2]; byte lk_tok[2]; byte lk_exp[2]; byte tk[2];
byte jl[2]; byte jfa[2]; byte jft[2]; byte jn[2];
byte mr[2]; byte mra[2]; byte mrt[2];

/* channels: per replica a lease client (L), a jobs client (J), the worker
 * thread's fenced writes (T); one for the CLI (M). One request in flight each. */
#define CHL(r) ((r) * 3)
#define CHJ(r) ((r) * 3 + 1)
#define CHT(r) ((r) * 3 + 2)
#define CHM 6
#define NCHT 7
byte ck[NCHT];         /* request kind, 0: free */
byte cs[NCHT];         /* S_* */
byte ca[NCHT]; byte ct[NCHT]; byte cx[NCHT];   /* args: lease id, token, slot */
byte rr[NCHT]; byte ra[NCHT]; byte rt[NCHT];   /* reply: result, holder lease id, token */
bit  rw[NCHT];         /* reply: the WAIT that followed it was satisfied (1 when none) */
bit  ack[NCHT] = 1;    /* everything written on this connection reached the replica */
/* commands left queued on dead connections */
byte ok[NORPH]; byte oa[NORPH]; byte ot[NORPH]; byte ox[NORPH]; byte oown[NORPH];

byte nFO; byte nRS; byte nTS; byte nLR; byte nDR; byte nWJ; byte nHO; byte nMR; byte nPA; byte nST; byte nWT; byte nLG;
bit  paused[NR];       /* the replica takes no step (its worker threads may) */
bit  stuck[NCHT];      /* the queued command is delayed in the network */

/* elector */
byte el[NR];
byte taid[NR]; byte ttok[NR];    /* the term's lease identity */
byte tsent[NR];                  /* mono send time of its last successful renew (or acquire) */
byte asent[NR];                  /* mono send time of the lease command in flight */
byte unans[NR];                  /* bit set of unanswered attempt ids */
byte moff[NR] = 1;               /* mono = now + moff (drift: 0 or 2) */
byte woff[NR] = WJ;              /* wall = now + woff - WJ (a step: 0 or 2*WJ) */
byte cool[NR];                   /* no acquire before this mono time (handoff cool-off) */
bit  drn[NR];                    /* draining for a handoff */
bit  did[NR];                    /* the elector stepped in this tick */

/* runtime (one job) and worker threads */
byte js[NR]; byte pos[NR]; byte cslot[NR];
byte nthr[NR]; byte orph[NR];    /* threads alive; of them, of cancelled runs (today) */
byte tha[NR]; byte tht[NR];      /* the running thread's fence */
bit  thw[NR];                    /* it may still write */
bit  tlong[NR];                  /* a long run: its thread may outlast this tick */

/* CLI */
byte cli; byte cta; byte ctt; bit cthr;

/* ghosts (for the properties only) */
byte runs[NS + 1];     /* runs started per slot */
bit  acc[NS + 1];      /* slot run, missed, coalesced or claimed-then-interrupted */
byte pend[NS + 1];     /* r+1: claimed by r, not yet settled */
byte lostc;            /* slots whose claim a failover or restart lost */
bit  gstart;           /* some leader has started the job's schedule */
byte mruns; bit mcanc; bit mlost;
/* ghosts are kept only when a property of the run reads them (fewer states) */
#define G_ACC (P_ACCOUNTED || P_LIVE)
#define G_RUNS (P_ONCE || P_ONCE_HIST)
#define G_LOST (P_ONCE_HIST)
#define G_MAN (P_ONCE || P_ONCE_HIST || P_CANCEL)
#define SETACC(x) if :: G_ACC -> acc[x] = 1 :: else -> skip fi
#define SETPEND(x, v) if :: G_ACC -> pend[x] = v :: else -> skip fi
byte maxacc; byte maxmint; byte premax; int accmask; bit rsdone; bit exmint;

/* Every property assertion reads assert(holds || violates_P_x): the flags are
 * always 0; their names make a failed assertion say which property it is. */
bit violates_P_excl, violates_P_fence, violates_P_tokens, violates_P_once, violates_P_once_history;
bit violates_P_serial, violates_P_accounted, violates_P_cancel, violates_P_live, violates_MODEL;
#define PROP(p, e) assert((e) || p)
/* Reachability probes (REACH = n): the n-th interesting event fails an
 * assertion, so a check that expects it shows the event happens in its
 * scope (the verified checks are not vacuous). */
#ifndef REACH
#define REACH 0
#endif
bit reached_PROBE;
#define PROBE(n) if :: REACH == (n) -> assert(reached_PROBE) :: else -> skip fi

/* scratch variables of the atomic steps; zero between steps (see inv()) */
byte hk, ha, ht, hx, hres, hra, hrt, hch, hown, htok, hs, hi;
byte hlive, hfence, hw;

/* ---- derived ---- */
#define MONO(r) (now + moff[r])
#define WALL(r) (now + woff[r] - WJ)
#define STIME(s) ((s) * PER)
#define RTIME (now >= toff -> now - toff : 0)
#if NO_DEADLINE
#define BELIEF TTL
#else
#define BELIEF RD
#endif
/* the replica believes it leads (Elector.is_leader()) */
#define B(r) (el[r] == E_LEAD && MONO(r) < tsent[r] + BELIEF)

#define HASWAIT(k) (WAITN > 0 && ((k) == K_ACQ || (k) == K_REN || (k) == K_ADO \
  || (FIX_CLAIM_WAIT && ((k) == K_CLM || (k) == K_MCL)) || (FIX_FW_WAIT && (k) == K_FW) \
  || (FIX_MCN_WAIT && (k) == K_MCN)))

#define UNB(r, x) ((unans[r] >> (x)) & 1)
#define CHREF(c, x) (ca[c] == (x) || ra[c] == (x))
#define REFD(x) (lk_aid[0] == (x) || lk_aid[1] == (x) || jfa[0] == (x) || jfa[1] == (x) \
  || mra[0] == (x) || mra[1] == (x) || taid[0] == (x) || taid[1] == (x) || tha[0] == (x) \
  || tha[1] == (x) || cta == (x) || UNB(0, x) || UNB(1, x) || CHREF(0, x) || CHREF(1, x) \
  || CHREF(2, x) || CHREF(3, x) || CHREF(4, x) || CHREF(5, x) || oa[0] == (x) || oa[NORPH - 1] == (x))

#define REPLY_ANY(ch) (cs[ch] >= S_RDY)

/* Timing. Time passes (a tick = one retry period) only when nothing is
 * due: Redis has run every queued command, the replica has applied the
 * primary's writes, every reply was taken, every leader renewed once in this
 * tick and fired its due slots, short runs returned (see URGENT). Exceptions
 * are the bounded faults: a paused replica, a stuck command, a long run. A
 * standby attempts at most once per tick (its retry period),
 * and once more when another replica's release of its term wakes it (hx = 1:
 * a term's release; the give-back of an unreplicated acquisition wakes
 * nobody early: its cycle costs a WAIT timeout). A slower standby is a
 * paused one. */
#define DID(r) did[r] = 1
#define WAKE() if :: hown < NR && hx == 1 -> did[1 - hown] = 0 :: else -> skip fi
/* An attempt that finds the lease held by someone else changes nothing (the
 * elector only notes the holder), so a standby attempts only when that
 * cannot be known to be the outcome: the key is absent from the primary, or
 * holds one of its own unanswered attempts. (A command that is then delayed
 * or re-sent is still modelled: the faults apply to the attempts made.) */
#define WORTH(r) (lk_aid[prim] == 0 || UNB(r, lk_aid[prim]))
#define STANDBY_TIMER(r) (!did[r] && MONO(r) >= cool[r] && WORTH(r))
#define LEADER_TIMER(r) (!did[r])
#define COOLOFF(r) cool[r] = MONO(r) + RP
#if LIVE
#define FAULTS_OPEN (now < FW)
#else
#define FAULTS_OPEN 1
#endif
/* Redis is fast: a command sent runs before anything else happens, unless a
 * fault delays it (stuck, or left on a dead connection). QUIET: nothing is
 * about to run in Redis. */
#define QUIETQ (!Q_URG(0) && !Q_URG(1) && !Q_URG(2) && !Q_URG(3) && !Q_URG(4) && !Q_URG(5) \
  && !Q_URG(6) && ok[0] == 0 && ok[NORPH - 1] == 0)
#define QUIET0 (QUIETQ && !R_URG(0, 0) && !R_URG(1, 0) && !R_URG(2, 0) && !R_URG(3, 1) \
  && !R_URG(4, 1) && !R_URG(5, 1) && cs[6] < S_RDY)
/* A run is short (it returns before anything else happens) unless it is
 * made a long one (a fault, bounded): only long runs overlap other events. */
#define QUIET (QUIET0 && !THR_URG(0) && !THR_URG(1))
/* the client takes a reply as soon as nothing is left to run in Redis */
#define TAKES(r) (!paused[r] && QUIETQ)
#define RUNS(r) (!paused[r] && QUIET)
/* By symmetry (the replicas are identical and start alike), the one pause
 * of a run may be given to r0: a run pausing r1 is the mirror of one
 * pausing r0. (No other fault is pinned to a replica.) */
#ifndef PAUSE_ANY
#define PAUSABLE(r) ((r) == 0)
#else
#define PAUSABLE(r) 1
#endif

/* ---- after every step: the state invariants, and the scratch cleared ---- */
inline inv() {
#if P_EXCL
  PROP(violates_P_excl, !(B(0) && B(1)));   /* P_excl: two replicas believe they lead */
#endif
  hk = 0; ha = 0; ht = 0; hx = 0; hres = 0; hra = 0; hrt = 0; hch = 0; hown = 0; htok = 0;
  hs = 0; hi = 0; hlive = 0; hfence = 0; hw = 0
}
#define INV inv()

/* ---- what must happen before time may pass ---- */
#define Q_URG(c) (cs[c] == S_Q && !stuck[c])
#define R_URG(c, r) (cs[c] >= S_RDY && !paused[r])
#define NET_URGENT (Q_URG(0) || Q_URG(1) || Q_URG(2) || Q_URG(3) || Q_URG(4) || Q_URG(5) || Q_URG(6) \
  || R_URG(0, 0) || R_URG(1, 0) || R_URG(2, 0) || R_URG(3, 1) || R_URG(4, 1) || R_URG(5, 1) \
  || cs[6] >= S_RDY || dirty || ok[0] != 0 || ok[NORPH - 1] != 0)
#define EL_URGENT(r) (RUNS(r) && ((el[r] == E_LEAD && B(r) && ck[CHL(r)] == 0 && !did[r]) \
  || (el[r] == E_LEAD && !B(r)) || (el[r] == E_IDLE && ck[CHL(r)] == 0 && STANDBY_TIMER(r)) \
  || (drn[r] && el[r] == E_LEAD && nthr[r] == 0 && js[r] != J_CLAIM && js[r] != J_MCLAIM && ck[CHL(r)] == 0)))
#if F_JOBS
#define JOB_URGENT(r) (RUNS(r) && ((js[r] == J_IDLE && B(r) && !drn[r] && pos[r] <= NS \
  && STIME(pos[r]) <= WALL(r) && ck[CHJ(r)] == 0) || (js[r] == J_RETRY && B(r) && !drn[r] \
  && ck[CHJ(r)] == 0 && STIME(cslot[r]) <= RTIME + FB)))
#define THR_URG(r) (nthr[r] > 0 && !tlong[r])
#define THR_LATE(r) (nthr[r] > 0)
#else
#define JOB_URGENT(r) 0
#define THR_URG(r) 0
#define THR_LATE(r) 0
#endif
/* LIVE, after FW: long runs end and stuck commands run (pauses and clocks heal at the tick) */
#define LATE_URGENT(r) (THR_LATE(r))
#define LATE_NET (stuck[0] || stuck[1] || stuck[2] || stuck[3] || stuck[4] || stuck[5] \
  || stuck[6])
#define URGENT (NET_URGENT || EL_URGENT(0) || EL_URGENT(1) || JOB_URGENT(0) || JOB_URGENT(1) \
  || THR_URG(0) || THR_URG(1) \
  || (!FAULTS_OPEN && (LATE_URGENT(0) || LATE_URGENT(1) || LATE_NET)))
#define TICK_OK (!URGENT)

inline live_checks() {
#if P_LIVE
  if
  :: now >= FW + DL -> PROP(violates_P_live, B(0) || B(1))          /* P_live: a leader, from FW + DL on */
  :: else -> skip
  fi;
#if F_JOBS
  for (hi : 1 .. NS) {
    if
    :: now >= (STIME(hi) > FW -> STIME(hi) : FW) + LS -> PROP(violates_P_live, acc[hi])   /* P_live: the slot is settled */
    :: else -> skip
    fi
  };
#endif
#endif
  skip
}

#if F_JOBS
#define JOB_REPLY(r) job_reply(r)
#else
#define JOB_REPLY(r) TAKE(CHJ(r))
#endif
#if F_MANUAL
#define CLI_REPLY() cli_reply()
#else
#define CLI_REPLY() TAKE(CHM)
#endif

#include "redis.pml"
#include "replica.pml"

/* One tick of time passes. Clock events happen at tick boundaries (a
 * discrete clock changes between ticks, not inside one); at most one per
 * boundary: a paused replica resumes, a monotonic clock drifts by one tick,
 * a wall clock steps forward or back, or is corrected. In LIVE runs, from FW on,
 * every fault heals at the boundary. */
inline tick_body() {
  live_checks();
  now++;
  for (hi : 0 .. 1) {
    if
    :: lk_aid[hi] != 0 && lk_exp[hi] <= now -> lk_aid[hi] = 0; lk_tok[hi] = 0; lk_exp[hi] = 0
    :: else -> skip
    fi
  };
  did[0] = 0; did[1] = 0;
  if
  :: !FAULTS_OPEN -> paused[0] = 0; paused[1] = 0; woff[0] = WJ; woff[1] = WJ
  :: else -> skip
  fi;
  INV
}

#define TICKS (now < H && TICK_OK)

inline clock_events(r) {
  if
  :: d_step { TICKS && FAULTS_OPEN && nDR < MAXDR && moff[r] == 1 -> nDR++; moff[r] = 0; tick_body(); printf("MSC: t=%d r%d monotonic clock lost a tick (slow)\n", now, r) }
  :: d_step { TICKS && FAULTS_OPEN && nDR < MAXDR && moff[r] == 1 -> nDR++; moff[r] = 2; tick_body(); printf("MSC: t=%d r%d monotonic clock gained a tick (fast)\n", now, r) }
  :: d_step {
       TICKS && FAULTS_OPEN && nWJ < MAXWJ && woff[r] == WJ ->
       nWJ++; woff[r] = 2 * WJ; tick_body(); printf("MSC: t=%d r%d wall clock steps +%d\n", now, r, WJ)
     }
  :: d_step {
       TICKS && FAULTS_OPEN && nWJ < MAXWJ && woff[r] == WJ ->
       nWJ++; woff[r] = 0; tick_body(); printf("MSC: t=%d r%d wall clock steps -%d\n", now, r, WJ)
     }
  :: d_step { TICKS && woff[r] != WJ -> woff[r] = WJ; tick_body(); printf("MSC: t=%d r%d wall clock corrected\n", now, r) }
  :: d_step { TICKS && paused[r] -> paused[r] = 0; tick_body(); printf("MSC: t=%d r%d resumes\n", now, r) }
  fi
}

active proctype world() {
  do
  :: d_step { TICKS -> tick_body() }
  :: d_step { now == H && TICK_OK -> live_checks(); INV }; break
  :: clock_events(0)
  :: clock_events(1)
  :: elector(0)
  :: elector(1)
  :: pauses(0)
  :: pauses(1)
#if F_JOBS
  :: runtime(0)
  :: runtime(1)
#endif
#if F_WRITER
  :: writer(0)
  :: writer(1)
#endif
#if F_MANUAL
  :: cli_actions()
#endif
  :: redis_actions()
  :: redis_faults()
  od
}
