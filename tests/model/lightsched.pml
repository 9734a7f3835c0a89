/* lightsched.pml -- HEADER PLACEHOLDER (rewritten below when the model settles) */

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
#define MAXWJ 0        /* wall clock jumps */
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
#ifndef MAXRL
#define MAXRL 0        /* periods during which the Redis replica applies nothing */
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
#define WJ 2           /* how far a wall clock jumps forward */
#endif
#ifndef FW
#define FW 4           /* LIVE: faults and pauses only before this tick */
#endif
#ifndef DL
#define DL 2           /* LIVE: a leader at most DL ticks after FW */
#endif
#ifndef LS
#define LS 5           /* LIVE: every slot settled LS ticks after it fired */
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
 * the job hash (last_slot, claimed_fence), the manual request */
byte lk_aid[2]; byte lk_tok[2]; byte lk_exp[2]; byte tk[2];
byte jl[2]; byte jfa[2]; byte jft[2];
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

byte nFO; byte nRS; byte nTS; byte nLR; byte nDR; byte nWJ; byte nHO; byte nMR; byte nPA; byte nST; byte nRL;
bit  paused[NR];       /* the replica takes no step (its worker threads may) */
bit  stuck[NCHT];      /* the queued command is delayed in the network */
bit  lag;              /* the Redis replica applies nothing for now */

/* elector */
byte el[NR];
byte taid[NR]; byte ttok[NR];    /* the term's lease identity */
byte tsent[NR];                  /* mono send time of its last successful renew (or acquire) */
byte asent[NR];                  /* mono send time of the lease command in flight */
byte unans[NR];                  /* bit set of unanswered attempt ids */
byte moff[NR] = 1;               /* mono = now + moff (drift: 0 or 2) */
byte woff[NR];                   /* wall = now + woff */
byte cool[NR];                   /* LIVE: no acquire before this mono time (cool-off) */
bit  drn[NR];                    /* draining for a handoff */
bit  did[NR];                    /* the elector stepped in this tick */
bit  wto[NR];                    /* a WAIT of this replica timed out in this tick */

/* runtime (one job) and worker threads */
byte js[NR]; byte pos[NR]; byte cslot[NR];
byte nthr[NR]; byte orph[NR];    /* threads alive; of them, of cancelled runs (today) */
byte tha[NR]; byte tht[NR];      /* the running thread's fence */
bit  thw[NR];                    /* it may still write */

/* CLI */
byte cli; byte cta; byte ctt; bit cthr;

/* ghosts (for the properties only) */
byte runs[NS + 1];     /* runs started per slot */
bit  acc[NS + 1];      /* slot run, missed, coalesced or claimed-then-interrupted */
byte pend[NS + 1];     /* r+1: claimed by r, not yet settled */
byte lostc;            /* slots whose claim a failover or restart lost */
byte mruns; bit mcanc; bit mlost;
byte maxacc; byte maxmint; byte premax; int accmask; bit rsdone; bit exmint;

hidden byte hk, ha, ht, hx, hres, hra, hrt, hch, hown, htok, hs, hi;
hidden byte hlive, hfence, hw;

/* ---- derived ---- */
#define MONO(r) (now + moff[r])
#define WALL(r) (now + woff[r])
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
/* WAIT gives up (timeout) before enough acks: at most once per replica per
 * tick (a WAIT timeout costs wait_timeout_ms of real time). */
#define WAIT_MAY_FAIL(own) (FAULTS_OPEN && (lag || (own) >= NR || !wto[own]))
#define WTO(own) if :: (own) < NR -> wto[own] = 1 :: else -> skip fi

/* Timing. Time passes (a tick = one retry period) only when nothing is
 * due: Redis has run every queued command, the replica has applied the
 * primary's writes, every reply was taken, every leader renewed once in this
 * tick and fired its due slots. Exceptions are the bounded faults: a paused
 * replica, a stuck command, a lagging Redis replica, a command on a dead
 * connection. A standby attempts at most once per tick (its retry period),
 * and once more when another replica's release of its term wakes it (hx = 1:
 * a term's release; the give-back of an unreplicated acquisition wakes
 * nobody early: its cycle costs a WAIT timeout). In the safety runs a
 * standby may also skip attempts; in LIVE runs, after FW, it may not. */
#define DID(r) did[r] = 1
#define WAKE() if :: hown < NR && hx == 1 -> did[1 - hown] = 0 :: else -> skip fi
#define STANDBY_TIMER(r) (!did[r] && MONO(r) >= cool[r])
#define LEADER_TIMER(r) (!did[r])
#if LIVE
#define FAULTS_OPEN (now < FW)
#define COOLOFF(r) cool[r] = MONO(r) + RP
#else
#define FAULTS_OPEN 1
#define COOLOFF(r) skip
#endif
/* WAIT gives up (timeout) before enough acks: at most once per replica per
 * tick (a WAIT timeout costs wait_timeout_ms of real time). */
#define WAIT_MAY_FAIL(own) (FAULTS_OPEN && (lag || (own) >= NR || !wto[own]))
#define WTO(own) if :: (own) < NR -> wto[own] = 1 :: else -> skip fi
#define RUNS(r) (!paused[r])

/* ---- state invariants, checked after every step ---- */
#if P_EXCL
#define INV assert(!(B(0) && B(1)))  /* P_excl */
#else
#define INV skip
#endif

/* ---- what must happen before time may pass ---- */
#define Q_URG(c) (cs[c] == S_Q && !stuck[c])
#define R_URG(c, r) (cs[c] >= S_RDY && RUNS(r))
#define NET_URGENT (Q_URG(0) || Q_URG(1) || Q_URG(2) || Q_URG(3) || Q_URG(4) || Q_URG(5) || Q_URG(6) \
  || R_URG(0, 0) || R_URG(1, 0) || R_URG(2, 0) || R_URG(3, 1) || R_URG(4, 1) || R_URG(5, 1) \
  || cs[6] >= S_RDY || (dirty && !lag))
#define EL_URGENT(r) (RUNS(r) && ((el[r] == E_LEAD && B(r) && ck[CHL(r)] == 0 && !did[r]) \
  || (el[r] == E_LEAD && !B(r))))
#if F_JOBS
#define JOB_URGENT(r) (RUNS(r) && ((js[r] == J_IDLE && B(r) && !drn[r] && pos[r] <= NS \
  && STIME(pos[r]) <= WALL(r) && ck[CHJ(r)] == 0) || (js[r] == J_RETRY && B(r) && !drn[r] \
  && ck[CHJ(r)] == 0 && STIME(cslot[r]) <= RTIME + FB)))
#define THR_LATE(r) (nthr[r] > 0)
#else
#define JOB_URGENT(r) 0
#define THR_LATE(r) 0
#endif
/* LIVE, after FW: faults heal, standbys attempt, drains finish, runs end */
#define LATE_URGENT(r) (paused[r] || woff[r] != 0 || THR_LATE(r) \
  || (el[r] == E_IDLE && ck[CHL(r)] == 0 && STANDBY_TIMER(r)) \
  || (drn[r] && el[r] == E_LEAD && nthr[r] == 0 && ck[CHL(r)] == 0))
#define LATE_NET (lag || stuck[0] || stuck[1] || stuck[2] || stuck[3] || stuck[4] || stuck[5] \
  || stuck[6] || ok[0] != 0 || ok[NORPH - 1] != 0)
#define URGENT (NET_URGENT || EL_URGENT(0) || EL_URGENT(1) || JOB_URGENT(0) || JOB_URGENT(1) \
  || (!FAULTS_OPEN && (LATE_URGENT(0) || LATE_URGENT(1) || LATE_NET)))
#define TICK_OK (!URGENT)

inline live_checks() {
#if P_LIVE
  if
  :: now >= FW + DL -> assert(B(0) || B(1))          /* liveness: a leader */
  :: else -> skip
  fi;
#if F_JOBS
  if
  :: now >= FW + LS ->
     for (hi : 1 .. NS) {
       if
       :: STIME(hi) + LS <= now -> assert(acc[hi])   /* liveness: every slot settled */
       :: else -> skip
       fi
     }
  :: else -> skip
  fi;
#endif
#endif
  skip
}

#include "redis.pml"
#include "replica.pml"

active proctype world() {
  do
  :: d_step {
       now < H && TICK_OK ->
       live_checks();
       now++;
       for (hi : 0 .. 1) {
         if
         :: lk_aid[hi] != 0 && lk_exp[hi] <= now -> lk_aid[hi] = 0; lk_tok[hi] = 0; lk_exp[hi] = 0
         :: else -> skip
         fi
       };
       did[0] = 0; did[1] = 0; wto[0] = 0; wto[1] = 0;
       INV
     }
  :: d_step { now == H && TICK_OK -> live_checks() }; break
  :: elector(0)
  :: elector(1)
  :: clocks(0)
  :: clocks(1)
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
