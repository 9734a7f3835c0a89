/* replica.pml -- one lightsched replica: the elector (leader/elector.py,
 * leader/timing.py), the runtime's slot loop (scheduler/runtime.py,
 * scheduler/slots.py), its worker threads, and the `run-job` CLI. Included by
 * lightsched.pml; see its header for what is modelled and why.
 */

/* ---- channel plumbing: one request in flight per (replica, client) ---- */

inline SEND(ch, k, a, t, x) {
  ck[ch] = k; cs[ch] = S_Q; ca[ch] = a; ct[ch] = t; cx[ch] = x; stuck[ch] = 0;
  rr[ch] = 0; ra[ch] = 0; rt[ch] = 0; rw[ch] = 0
}

/* Takes the reply of channel ch into hk/ha/ht/hx/hres/hra/hrt and frees ch. */
inline TAKE(ch) {
  hk = ck[ch]; ha = ca[ch]; ht = ct[ch]; hx = cx[ch];
  hres = rr[ch]; hra = ra[ch]; hrt = rt[ch]; hw = rw[ch];
  ck[ch] = 0; cs[ch] = S_FREE; ca[ch] = 0; ct[ch] = 0; cx[ch] = 0;
  rr[ch] = 0; ra[ch] = 0; rt[ch] = 0; rw[ch] = 0
}

/* The smallest attempt id nothing refers to any more: lease_id / acquired_at
 * are unique per attempt; reusing a forgotten one is a renaming. */
inline fresh_aid() {
  ha = 1;
  do
  :: ha <= MAXAID && REFD(ha) -> ha++
  :: ha <= MAXAID && !REFD(ha) -> break
  :: ha > MAXAID -> PROP(violates_MODEL, false) /* MODEL: raise MAXAID */
  od
}

/* ---- the runtime ---- */

#if F_JOBS
/* A new term: continue from the job's last claimed slot (plan_resume), then
 * publish the next run (SET_NEXT_LUA). Both are done here, at the primary,
 * when the term starts. With no slot claimed yet, plan_resume starts from
 * now (today and as planned): the slots owed since an earlier leader started
 * the job are skipped, uncounted. Proposed (FIX_INITMARK): the first leader
 * records where the job starts with an acknowledged write (WAIT; the job
 * does not start before the acks) and a successor resumes from it. */
inline takeover(r) {
  if
  :: js[r] == J_OFF -> js[r] = J_IDLE
  :: else -> PROBE(12)                                /* fixed: still occupied by a thread */
  fi;
  if
  :: NO_MARK -> pos[r] = WALL(r) / PER + 1            /* mutant (e): from its own wall clock */
  :: !NO_MARK && jl[prim] != 0 -> pos[r] = jl[prim] + 1
  :: !NO_MARK && jl[prim] == 0 && FIX_INITMARK && jn[prim] != 0 -> pos[r] = jn[prim]
  :: !NO_MARK && jl[prim] == 0 && !(FIX_INITMARK && jn[prim] != 0) ->
     pos[r] = (WALL(r) >= 0 -> WALL(r) / PER + 1 : 1);  /* no slot claimed yet: from now */
     if
     :: !gstart ->                                    /* the job starts here: earlier slots are not owed */
        for (hi : 1 .. NS) { if :: hi < pos[r] -> SETACC(hi) :: else -> skip fi }
     :: else -> skip
     fi
  fi;
  gstart = 1;
  do
  :: pos[r] <= NS && STIME(pos[r]) + GRACE < WALL(r) -> SETACC(pos[r]); pos[r]++   /* missed: no_leader */
  :: else -> break
  od;
  if
  :: pos[r] > NS + 1 -> pos[r] = NS + 1
  :: else -> skip
  fi;
  if
  :: FIX_INITMARK && jl[prim] == 0 && jn[prim] == 0 && lk_aid[prim] == taid[r] && lk_tok[prim] == ttok[r] ->
     jn[prim] = pos[r]; jn[1 - prim] = pos[r]         /* the job's start, acknowledged */
  :: else -> skip                                     /* (today's SET_NEXT is never read back) */
  fi
}

/* A slot's claim (of this replica) is settled without a run starting now. */
inline settle(r, s) {
  SETACC(s);
  if
  :: pend[s] == r + 1 -> pend[s] = 0
  :: else -> skip
  fi
}

/* StoppedLeading: the runtime pauses the scheduler and cancels its runs. */
inline runtime_stop(r) {
  for (hi : 1 .. NS) {
    if
    :: pend[hi] == r + 1 -> SETACC(hi); pend[hi] = 0   /* claimed-then-interrupted */
    :: else -> skip
    fi
  };
  if
  :: js[r] == J_RUN && FIX_OCCUPY -> skip             /* fixed: occupied until the thread returns */
  :: js[r] == J_RUN && !FIX_OCCUPY -> orph[r]++; js[r] = J_OFF   /* today: task cancelled, thread runs on */
  :: else -> js[r] = J_OFF; cslot[r] = 0
  fi;
  pos[r] = 0
}

/* A run starts: its worker thread starts. s = 0 for the manual run. */
inline run_start(r, s, manual) {
#if P_SERIAL
  PROP(violates_P_serial, nthr[r] == 0);                               /* P_serial: one run of the job per replica */
  PROP(violates_P_serial, !(cthr && cta == taid[r] && ctt == ttok[r])); /* P_serial: a manual run under this term is running */
#endif
  if
  :: nFO + nRS > 0 -> PROBE(6)                        /* a run after a failover or restart */
  :: else -> skip
  fi;
  if
  :: G_RUNS && !manual && runs[s] > 0 -> PROBE(13)    /* a slot's second run */
  :: else -> skip
  fi;
  nthr[r]++; tha[r] = taid[r]; tht[r] = ttok[r]; thw[r] = 1; js[r] = J_RUN; cslot[r] = 0;
  if
  :: !manual ->
     printf("MSC: t=%d r%d RUNS slot %d (token %d)\n", now, r, s, ttok[r]);
     if
     :: G_RUNS -> runs[s]++
     :: else -> skip
     fi;
#if P_ONCE
     PROP(violates_P_once, runs[s] <= 1);                            /* P_once */
#endif
#if P_ONCE_HIST
     PROP(violates_P_once_history, runs[s] <= 1 || ((lostc >> s) & 1));      /* P_once_history */
#endif
#if P_ACCOUNTED
     PROP(violates_P_accounted, now + FB >= STIME(s));                    /* P_accounted: not before its time */
#endif
     settle(r, s)
  :: manual ->
     printf("MSC: t=%d r%d RUNS the manual request (token %d)\n", now, r, ttok[r]); PROBE(9);
     if
     :: G_MAN -> mruns++
     :: else -> skip
     fi;
#if P_ONCE
     PROP(violates_P_once, mruns <= 1);                              /* P_once (manual request) */
#endif
#if P_ONCE_HIST
     PROP(violates_P_once_history, mruns <= 1 || mlost);                     /* P_once_history (manual request) */
#endif
#if P_CANCEL
     PROP(violates_P_cancel, !mcanc);                                  /* P_cancel: it was reported cancelled */
#endif
     skip
  fi
}

inline job_reply(r) {
  TAKE(CHJ(r));
  if
  :: hk == K_CLM && !(js[r] == J_CLAIM && cslot[r] == hx && el[r] == E_LEAD && taid[r] == ha && ttok[r] == ht) ->
     printf("MSC: t=%d r%d reply to a cancelled claim of slot %d: %d\n", now, r, hx, hres)
  :: hk == K_CLM && js[r] == J_CLAIM && cslot[r] == hx && el[r] == E_LEAD && taid[r] == ha && ttok[r] == ht ->
     if
     :: hres == R_OK && hw && B(r) -> run_start(r, hx, 0)
     :: hres == R_OK && hw && !B(r) -> settle(r, hx); js[r] = J_IDLE; cslot[r] = 0   /* not leading: not run */
     :: hres == R_OK && !hw ->                                                   /* missed: unreplicated */
        settle(r, hx); js[r] = J_IDLE; cslot[r] = 0; PROBE(5);
        printf("MSC: t=%d r%d claim of slot %d short of acks: counted missed\n", now, r, hx)
     :: hres == R_CLAIMED ->
        printf("MSC: t=%d r%d claim of slot %d refused 'claimed': skipped\n", now, r, hx);
#if P_ACCOUNTED
        PROP(violates_P_accounted, acc[hx] || (pend[hx] != 0 && pend[hx] != r + 1));  /* P_accounted: skipped silently */
#endif
        if
        :: pend[hx] == r + 1 -> pend[hx] = 0
        :: else -> skip
        fi;
        js[r] = J_IDLE; cslot[r] = 0
     :: hres == R_FENCED -> js[r] = J_IDLE; cslot[r] = 0; printf("MSC: t=%d r%d claim of slot %d fenced\n", now, r, hx)
     :: hres == R_FUTURE -> js[r] = J_RETRY; PROBE(4); printf("MSC: t=%d r%d claim of slot %d refused 'future'\n", now, r, hx)
     :: hres == R_ERR -> settle(r, hx); js[r] = J_IDLE; cslot[r] = 0                 /* missed: redis */
     :: else -> PROP(violates_MODEL, false) /* MODEL */
     fi
  :: hk == K_MCL && !(js[r] == J_MCLAIM && el[r] == E_LEAD && taid[r] == ha && ttok[r] == ht) -> skip
  :: hk == K_MCL && js[r] == J_MCLAIM && el[r] == E_LEAD && taid[r] == ha && ttok[r] == ht ->
     if
     :: hres == R_OK && hw && B(r) -> run_start(r, 0, 1)
     :: else -> js[r] = J_IDLE
     fi
  :: else -> PROP(violates_MODEL, false) /* MODEL */
  fi
}

inline runtime(r) {
  if
  /* due slots fire on the WALL clock: late ones past the grace are missed, the rest coalesce into the last */
  :: d_step {
       RUNS(r) && js[r] == J_IDLE && B(r) && !drn[r] && pos[r] <= NS && STIME(pos[r]) <= WALL(r) && ck[CHJ(r)] == 0 ->
       hs = 0;
       do
       :: pos[r] <= NS && STIME(pos[r]) <= WALL(r) ->
          if
          :: WALL(r) - STIME(pos[r]) > GRACE -> SETACC(pos[r])          /* missed: late */
          :: else ->
             if
             :: hs != 0 -> SETACC(hs)                                    /* coalesced */
             :: else -> skip
             fi;
             hs = pos[r]
          fi;
          pos[r]++
       :: else -> break
       od;
       if
       :: hs != 0 -> SEND(CHJ(r), K_CLM, taid[r], ttok[r], hs); js[r] = J_CLAIM; cslot[r] = hs
       :: else -> skip
       fi;
       INV
     }
  /* fixed: a claim refused as 'future' is sent again (when Redis TIME reaches the slot) */
  :: d_step {
       RUNS(r) && js[r] == J_RETRY && B(r) && !drn[r] && ck[CHJ(r)] == 0 ->
       SEND(CHJ(r), K_CLM, taid[r], ttok[r], cslot[r]); js[r] = J_CLAIM; INV
     }
  :: d_step { TAKES(r) && REPLY_ANY(CHJ(r)) -> job_reply(r); INV }
  /* the run's thread returns; its task completes and frees the job */
  :: d_step {
       QUIET0 && js[r] == J_RUN && nthr[r] > orph[r] ->
       nthr[r]--; printf("MSC: t=%d r%d run's thread returns\n", now, r);
       if
       :: el[r] == E_LEAD -> js[r] = J_IDLE
       :: else -> js[r] = J_OFF
       fi;
       if
       :: nthr[r] == 0 -> tha[r] = 0; tht[r] = 0; thw[r] = 0; tlong[r] = 0
       :: else -> skip
       fi;
       INV
     }
  /* a long run: its thread goes on past the end of this tick */
  :: d_step {
       QUIET0 && FAULTS_OPEN && nLG < MAXLG && nthr[r] > 0 && !tlong[r] ->
       nLG++; tlong[r] = 1; printf("MSC: t=%d r%d the run is a long one\n", now, r); INV
     }
  /* today: the thread of a cancelled run returns (nobody was waiting for it) */
  :: d_step {
       QUIET0 && orph[r] > 0 ->
       orph[r]--; nthr[r]--; printf("MSC: t=%d r%d thread of a cancelled run returns\n", now, r);
       if
       :: nthr[r] == 0 -> tha[r] = 0; tht[r] = 0; thw[r] = 0; tlong[r] = 0
       :: else -> skip
       fi;
       INV
     }
  /* a long run's fenced write (ctx.fenced_set & co.): a stale thread's writes */
  :: d_step {
       QUIET && nthr[r] > 0 && tlong[r] && thw[r] && ck[CHT(r)] == 0 ->
       SEND(CHT(r), K_FW, tha[r], tht[r], 0); thw[r] = 0; INV
     }
  :: d_step { TAKES(r) && REPLY_ANY(CHT(r)) -> TAKE(CHT(r)); INV }
#if F_MANUAL
  /* fixed: the leader claims a pending manual request, through the job's own queue */
  :: d_step {
       RUNS(r) && FIX_MANUAL && js[r] == J_IDLE && B(r) && !drn[r] && mr[prim] == M_PEND && ck[CHJ(r)] == 0 ->
       SEND(CHJ(r), K_MCL, taid[r], ttok[r], 0); js[r] = J_MCLAIM; INV
     }
#endif
  fi
}
#endif /* F_JOBS */

#if F_WRITER
/* Without the runtime: a writer that may send a fenced write under its latest
 * term at any time, also long after that term ended (a stale thread). */
inline writer(r) {
  if
  :: d_step { QUIET && tha[r] != 0 && ck[CHT(r)] == 0 -> SEND(CHT(r), K_FW, tha[r], tht[r], 0); INV }
  :: d_step { TAKES(r) && REPLY_ANY(CHT(r)) -> TAKE(CHT(r)); INV }
  fi
}
#endif

/* ---- the elector ---- */

inline start_term(r, a, t, sent) {
#if P_TOKENS
  PROP(violates_MODEL, t < 31); /* MODEL: token bound */
  if
  :: (accmask >> t) & 1 -> PROP(violates_P_tokens, exmint)             /* P_tokens: a token accepted twice */
  :: else -> skip
  fi;
  accmask = accmask | (1 << t);
  if
  :: t > maxacc -> maxacc = t
  :: else -> skip
  fi;
#endif
  printf("MSC: t=%d r%d LEADS with token %d (lease %d)\n", now, r, t, a);
  if
  :: nHO > 0 && cool[1 - r] != 0 -> PROBE(11)         /* a takeover after the other's handoff */
  :: else -> skip
  fi;
  el[r] = E_LEAD; taid[r] = a; ttok[r] = t; tsent[r] = sent; asent[r] = 0; unans[r] = 0;
#if F_WRITER
  tha[r] = a; tht[r] = t;
#endif
#if F_JOBS
  takeover(r);
#endif
  skip
}

/* The term ends (StoppedLeading); rel: release the lease, best effort. */
inline stop(r, rel) {
  printf("MSC: t=%d r%d STOPS leading (token %d)\n", now, r, ttok[r]);
  if
  :: rel && ck[CHL(r)] == 0 -> SEND(CHL(r), K_REL, taid[r], ttok[r], 1)
  :: else -> skip
  fi;
  el[r] = E_IDLE; taid[r] = 0; ttok[r] = 0; tsent[r] = 0; asent[r] = 0; drn[r] = 0;
#if F_JOBS
  runtime_stop(r);
#endif
  skip
}

inline lease_reply(r) {
  TAKE(CHL(r));
  if
  :: hk == K_ACQ ->
     if
     :: hres == R_ERR -> unans[r] = unans[r] | (1 << ha); el[r] = E_IDLE; asent[r] = 0
     :: hres == R_OK && !hw ->                        /* short of acks: not held; give it back */
        printf("MSC: t=%d r%d acquire of token %d short of acks: gives it back\n", now, r, hrt);
        el[r] = E_IDLE; asent[r] = 0; SEND(CHL(r), K_REL, ha, hrt, 0)
     :: hres == R_OK && hw -> start_term(r, ha, hrt, asent[r])
     :: hres == R_HELD && ((unans[r] >> hra) & 1) ->  /* held by an unanswered attempt of ours: adopt it */
        printf("MSC: t=%d r%d adopts lease %d (token %d) of an unanswered attempt\n", now, r, hra, hrt);
        SEND(CHL(r), K_ADO, hra, hrt, 0); asent[r] = MONO(r); el[r] = E_ADO; PROBE(2)
     :: else ->
        printf("MSC: t=%d r%d finds the lease held (lease %d, token %d): stands by\n", now, r, hra, hrt);
        el[r] = E_IDLE; asent[r] = 0
     fi
  :: hk == K_ADO ->
     if
     :: hres == R_OK && hw -> start_term(r, ha, ht, asent[r])
     :: else -> el[r] = E_IDLE; asent[r] = 0
     fi
  :: hk == K_REN && !(el[r] == E_LEAD && taid[r] == ha && ttok[r] == ht) -> skip   /* an older term's */
  :: hk == K_REN && el[r] == E_LEAD && taid[r] == ha && ttok[r] == ht ->
     if
     :: hres == R_ERR -> skip                         /* retried until the deadline */
     :: hres == R_OK && hw && B(r) ->
        if
        :: asent[r] > tsent[r] -> tsent[r] = asent[r]
        :: else -> skip
        fi
     :: hres == R_OK && hw && !B(r) -> skip           /* landed after the deadline */
     :: hres == R_OK && !hw ->                        /* unreplicated: step down at once */
        printf("MSC: t=%d r%d renew short of acks\n", now, r); PROBE(8); stop(r, FIX_RENEW_REL)
     :: hres == R_NO -> printf("MSC: t=%d r%d renew finds the lease gone\n", now, r); stop(r, 0)
     :: else -> PROP(violates_MODEL, false) /* MODEL */
     fi;
     asent[r] = 0
  :: hk == K_REL -> skip
  :: else -> PROP(violates_MODEL, false) /* MODEL */
  fi
}

inline elector(r) {
  if
  /* standby: one acquire attempt (a fresh lease_id / acquired_at per attempt) */
  :: d_step {
       RUNS(r) && el[r] == E_IDLE && ck[CHL(r)] == 0 && STANDBY_TIMER(r) ->
       fresh_aid();
       SEND(CHL(r), K_ACQ, ha, 0, 0); asent[r] = MONO(r); el[r] = E_ACQ; DID(r); INV
     }
  /* leader: renew, only while the term is valid */
  :: d_step {
       RUNS(r) && el[r] == E_LEAD && B(r) && ck[CHL(r)] == 0 && LEADER_TIMER(r) ->
       SEND(CHL(r), K_REN, taid[r], ttok[r], 0); asent[r] = MONO(r); DID(r); INV
     }
  /* leader: its deadline passed (stalled, or renewals failed): step down, release best effort */
  :: d_step { RUNS(r) && el[r] == E_LEAD && !B(r) -> printf("MSC: t=%d r%d renew deadline passed\n", now, r); stop(r, 1); INV }
  :: d_step { TAKES(r) && REPLY_ANY(CHL(r)) -> lease_reply(r); INV }
  /* graceful handoff: stop starting runs, drain (bounded: any time), release, sit out one retry period */
  :: d_step { RUNS(r) && FAULTS_OPEN && nHO < MAXHO && B(r) && !drn[r] -> nHO++; drn[r] = 1; INV }
  :: d_step {
       RUNS(r) && drn[r] && el[r] == E_LEAD && ck[CHL(r)] == 0 ->
       printf("MSC: t=%d r%d hands off: releases\n", now, r); stop(r, 1); COOLOFF(r); INV
     }
  fi
}

/* ---- pauses ---- */
/* A process pause (SIGSTOP, GC, a stalled event loop) starts at any point;
 * the replica then takes no step while time passes (its worker threads may).
 * It resumes at a tick boundary (see world()): resuming inside a tick is the
 * same as resuming at its start with the other replica acting first. */
inline pauses(r) {
  d_step {
    QUIET && FAULTS_OPEN && nPA < MAXPA && !paused[r] && PAUSABLE(r) ->
    nPA++; paused[r] = 1; printf("MSC: t=%d r%d PAUSED\n", now, r); INV
  }
}

/* ---- the `run-job` CLI ---- */
#if F_MANUAL
#define CLI_OVERLAPS(r) (nthr[r] > orph[r] && js[r] == J_RUN && tha[r] == cta && tht[r] == ctt)
inline cli_actions() {
  if
  /* today: read the leader's token NUMBER and run the job here, outside the leader */
  :: d_step {
       QUIET && !FIX_MANUAL && nMR < MAXMR ->
       nMR++; cthr = 1; cta = lk_aid[prim]; ctt = lk_tok[prim];
       printf("MSC: t=%d CLI runs the job under token %d\n", now, ctt);
#if P_SERIAL
       PROP(violates_P_serial, cta == 0 || !(CLI_OVERLAPS(0) || CLI_OVERLAPS(1)));   /* P_serial: a scheduled run under this term is running */
#endif
       INV
     }
  :: d_step { QUIET && cthr -> cthr = 0; cta = 0; ctt = 0; INV }
  /* fixed: a request to the leader; cancelled if nobody picks it up in time */
  :: d_step { QUIET && FIX_MANUAL && nMR < MAXMR && ck[CHM] == 0 -> nMR++; SEND(CHM, K_MRQ, 0, 0, 0); cli = C_SENT; INV }
  :: d_step { QUIET && FIX_MANUAL && cli == C_STORED && ck[CHM] == 0 -> SEND(CHM, K_MCN, 0, 0, 0); cli = C_CANCEL; INV }
  :: d_step { QUIETQ && REPLY_ANY(CHM) -> cli_reply(); INV }
  fi
}

inline cli_reply() {
  TAKE(CHM);
  if
  :: hk == K_MRQ && hres == R_OK -> cli = C_STORED
  :: hk == K_MRQ && hres != R_OK -> cli = C_DONE       /* reports a failure */
  :: hk == K_MCN && hres == R_CANC && hw ->
     printf("MSC: t=%d CLI reports the request CANCELLED\n", now); PROBE(10);
     if
     :: P_CANCEL -> mcanc = 1
     :: else -> skip
     fi;
     cli = C_DONE;
#if P_CANCEL
     PROP(violates_P_cancel, mruns == 0);                              /* P_cancel */
#endif
     skip
  :: hk == K_MCN && !(hres == R_CANC && hw) -> cli = C_DONE   /* claimed by the leader, or unknown */
  :: else -> PROP(violates_MODEL, false) /* MODEL */
  fi
}
#endif
