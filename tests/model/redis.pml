/* redis.pml -- the Redis deployment: a primary and one replica, the Lua
 * scripts (each one d_step: scripts are atomic in Redis), asynchronous
 * replication, WAIT, and the Redis faults (failover, empty restart, TIME
 * step back). Included by lightsched.pml; see its header for what is modelled
 * and why.
 */

/* ---- helpers used inside scripts ---- */

/* A script wrote to the primary: the replica is behind, and WAIT on the
 * writing connection now needs a sync. A command on a dead connection (an
 * orphan, hlive=0) moves no live connection's offset. */
inline WRITE() {
  dirty = 1;
  if
  :: hlive -> ack[hch] = 0
  :: else -> skip
  fi
}

/* FENCE_CHECK_LUA: the lease key must hold the writer's lease.
 * Today: the token NUMBER only. Fixed: token and lease_id (identity). */
inline fence_check() {
  hfence = (lk_aid[prim] != 0 && lk_tok[prim] == ht && (!FIX_IDFENCE || lk_aid[prim] == ha));
#if P_FENCE
  if
  :: hfence -> PROP(violates_P_fence, lk_aid[prim] == ha && lk_tok[prim] == ht) /* P_fence */
  :: else -> skip
  fi
#endif
}

/* P_tokens, at every mint: larger than every token a replica accepted, unless
 * minted after an empty restart at a Redis TIME not above the largest token
 * minted before it (the floor cannot help then; that exemption is recorded). */
inline mint_check() {
#if P_TOKENS
  if
  :: rsdone && RTIME <= premax -> exmint = 1
  :: else -> PROP(violates_P_tokens, htok > maxacc) /* P_tokens: mint order */
  fi;
  if
  :: htok > maxmint -> maxmint = htok
  :: else -> skip
  fi
#endif
  skip
}

/* A claim of slot hx by lease (ha, ht) of replica hown took effect. */
inline claim_ghost() {
  if
  :: hown < NR && el[hown] == E_LEAD && taid[hown] == ha && ttok[hown] == ht -> SETPEND(hx, hown + 1)
  :: else -> SETACC(hx) /* its term is already over: claimed-then-interrupted */
  fi
}

/* Runs the script (hk; args ha, ht, hx) on the current primary; sets hres, hra, hrt. */
inline run_script() {
  hres = 0; hra = 0; hrt = 0;
  if
  :: hk == K_ACQ ->                                   /* ACQUIRE_LUA */
     if
     :: lk_aid[prim] != 0 && FIX_ACQ_SELF && lk_aid[prim] == ha ->
        /* fixed: our own attempt (a re-send): PEXPIRE, a write, so WAIT covers the first execution */
        if
        :: !MUT_G -> lk_exp[prim] = now + TTL; WRITE()
        :: else -> skip
        fi;
        hres = R_OK; hrt = lk_tok[prim]; PROBE(1)
     :: lk_aid[prim] != 0 && !(FIX_ACQ_SELF && lk_aid[prim] == ha) ->
        hres = R_HELD; hra = lk_aid[prim]; hrt = lk_tok[prim]
     :: lk_aid[prim] == 0 ->
        htok = tk[prim] + 1;                           /* max(GET token + 1, TIME) */
        if
        :: !NO_TIMEFLOOR && RTIME > htok -> htok = RTIME
        :: else -> skip
        fi;
        PROP(violates_MODEL, htok < 31); /* MODEL: token bound */
        mint_check();
        tk[prim] = htok; lk_aid[prim] = ha; lk_tok[prim] = htok; lk_exp[prim] = now + TTL;
        WRITE();
        hres = R_OK; hrt = htok
     fi
  :: hk == K_REN || hk == K_ADO ->                    /* RENEW_LUA */
     if
     :: lk_aid[prim] != 0 && lk_aid[prim] == ha && lk_tok[prim] == ht ->
        lk_exp[prim] = now + TTL; WRITE(); hres = R_OK
     :: else -> hres = R_NO
     fi
  :: hk == K_REL ->                                   /* RELEASE_LUA: DEL + PUBLISH released */
     if
     :: lk_aid[prim] != 0 && lk_aid[prim] == ha && lk_tok[prim] == ht ->
        lk_aid[prim] = 0; lk_tok[prim] = 0; lk_exp[prim] = 0; WRITE(); hres = R_OK;
        printf("MSC: t=%d lease %d (token %d) released\n", now, ha, ht);
        WAKE()
     :: else -> hres = R_NO
     fi
  :: hk == K_CLM ->                                   /* CLAIM_SLOT_LUA */
     fence_check();
     if
     :: !hfence -> hres = R_FENCED
     :: hfence && !NO_MARK && jl[prim] >= hx && FIX_CLAIM_IDEM && jl[prim] == hx && jfa[prim] == ha && jft[prim] == ht ->
        WRITE(); hres = R_OK; PROBE(3)                 /* fixed: this very claim again: re-write, ok */
     :: hfence && !NO_MARK && jl[prim] >= hx && !(FIX_CLAIM_IDEM && jl[prim] == hx && jfa[prim] == ha && jft[prim] == ht) ->
        hres = R_CLAIMED
     :: hfence && (NO_MARK || jl[prim] < hx) && FIX_FUTURE && STIME(hx) > RTIME + FB -> hres = R_FUTURE
     :: hfence && (NO_MARK || jl[prim] < hx) && !(FIX_FUTURE && STIME(hx) > RTIME + FB) ->
        if
        :: !NO_MARK -> jl[prim] = hx
        :: else -> skip
        fi;
        if
        :: FIX_CLAIM_IDEM -> jfa[prim] = ha; jft[prim] = ht
        :: else -> skip
        fi;
        WRITE(); hres = R_OK;
        printf("MSC: t=%d slot %d claimed under token %d (lease %d)\n", now, hx, ht, ha);
        claim_ghost()
     fi
  :: hk == K_FW ->                                    /* FENCED_SET_LUA and every other fenced write */
     fence_check();
     if
     :: hfence -> WRITE(); hres = R_OK; printf("MSC: t=%d fenced write under token %d (lease %d) lands\n", now, ht, ha)
     :: else -> hres = R_FENCED; PROBE(7)
     fi
  :: hk == K_MRQ ->                                   /* manual request: enqueue (idempotent per request id) */
     if
     :: mr[prim] == M_NONE -> mr[prim] = M_PEND
     :: else -> skip
     fi;
     WRITE(); hres = R_OK
  :: hk == K_MCN ->                                   /* manual request: pending -> cancelled */
     if
     :: mr[prim] == M_PEND || mr[prim] == M_CANC -> mr[prim] = M_CANC; WRITE(); hres = R_CANC
     :: else -> hres = R_GONE
     fi
  :: hk == K_MCL ->                                   /* manual request: fenced claim, pending -> claimed */
     fence_check();
     if
     :: !hfence -> hres = R_FENCED
     :: hfence && mr[prim] == M_PEND -> mr[prim] = M_CLAIMED; mra[prim] = ha; mrt[prim] = ht; WRITE(); hres = R_OK
     :: hfence && mr[prim] == M_CLAIMED && mra[prim] == ha && mrt[prim] == ht -> WRITE(); hres = R_OK
     :: else -> hres = R_GONE
     fi
  :: else -> PROP(violates_MODEL, false) /* MODEL */
  fi
}

/* Redis executes the live copy of the request queued on channel ch. When
 * WAIT follows the command (same connection, one pipeline), its outcome is
 * settled here: the replica applies everything up to this command and WAIT
 * returns 1 (first alternative); or, a fault, the replica is slow and WAIT
 * times out with 0 (second). WAIT counts only the writes made on its own
 * connection: after a command that wrote nothing, on a fresh connection, it
 * returns 1 at once whatever the replica has (ack[ch] = 1). */
inline exec_begin(ch, own) {
  stuck[ch] = 0;
  hk = ck[ch]; ha = ca[ch]; ht = ct[ch]; hx = cx[ch]; hch = ch; hown = own; hlive = 1;
  run_script();
  rr[ch] = hres; ra[ch] = hra; rt[ch] = hrt; cs[ch] = S_RDY; rw[ch] = 1
}
inline exec_live(ch, own) {
  if
  :: d_step {
       cs[ch] == S_Q ->
       exec_begin(ch, own);
       if
       :: HASWAIT(hk) && !ack[ch] ->
          copy_node(1 - prim, prim); dirty = 0;
          for (hi : 0 .. NCHT - 1) { ack[hi] = 1 }
       :: else -> skip
       fi;
       INV
     }
  :: d_step {
       cs[ch] == S_Q && HASWAIT(ck[ch]) && FAULTS_OPEN && nWT < MAXWT ->
       exec_begin(ch, own);
       if
       :: !ack[ch] -> nWT++; rw[ch] = 0; printf("MSC: t=%d WAIT times out (ch %d)\n", now, ch)
       :: else -> skip
       fi;
       INV
     }
  fi
}

/* Redis executes a command left queued on a connection the client gave up
 * on, before or after its re-send (in the same tick: a command on a dead
 * connection is read promptly or never); or never. */
inline exec_orphan(o) {
  if
  :: d_step {
       ok[o] != 0 ->
       hk = ok[o]; ha = oa[o]; ht = ot[o]; hx = ox[o]; hown = oown[o]; hlive = 0; hch = 0;
       run_script();
       ok[o] = 0; oa[o] = 0; ot[o] = 0; ox[o] = 0; oown[o] = 0;
       INV
     }
  :: d_step { ok[o] != 0 -> ok[o] = 0; oa[o] = 0; ot[o] = 0; ox[o] = 0; oown[o] = 0; INV }
  fi
}

inline copy_node(d, s) {
  lk_aid[d] = lk_aid[s]; lk_tok[d] = lk_tok[s]; lk_exp[d] = lk_exp[s]; tk[d] = tk[s];
  jl[d] = jl[s]; jfa[d] = jfa[s]; jft[d] = jft[s]; jn[d] = jn[s];
  mr[d] = mr[s]; mra[d] = mra[s]; mrt[d] = mrt[s]
}

inline wipe_node(d) {
  lk_aid[d] = 0; lk_tok[d] = 0; lk_exp[d] = 0; tk[d] = 0;
  jl[d] = 0; jfa[d] = 0; jft[d] = 0; jn[d] = 0;
  mr[d] = M_NONE; mra[d] = 0; mrt[d] = 0
}

/* Asynchronous replication: the replica applies the primary's stream. Any
 * prefix is reachable (this step may happen after any write), and WAIT only
 * asks "has everything written on my connection reached the replica". */
inline replicate() {
  d_step {
    QUIET && dirty ->
    copy_node(1 - prim, prim);
    dirty = 0;
    for (hi : 0 .. NCHT - 1) { ack[hi] = 1 };
    INV
  }
}

/* Every connection broke: queued commands are re-sent by the client on a new
 * connection (fresh offset 0); commands on dead connections die with the old
 * server. (A reply already settled, WAIT included, has been received.) */
inline reconnect_all() {
  for (hi : 0 .. NCHT - 1) { ack[hi] = 1 };
  for (hi : 0 .. NORPH - 1) { ok[hi] = 0; oa[hi] = 0; ot[hi] = 0; ox[hi] = 0; oown[hi] = 0 }
}

/* Failover: the replica becomes the primary with what it had applied; the
 * unreplicated suffix is lost. The old primary comes back empty, as the new
 * replica, and must sync. step: Redis TIME steps back on the new primary. */
inline failover(step) {
  d_step {
    QUIET && FAULTS_OPEN && nFO < MAXFO && (!step || nTS < MAXTS) ->
    nFO++;
    if
    :: step -> nTS++; toff = TSTEP
    :: else -> skip
    fi;
    /* ghost: slots whose claim this failover loses (P_once_history) */
    hs = jl[1 - prim] + 1;
    do
    :: hs <= jl[prim] -> if :: G_LOST -> lostc = lostc | (1 << hs) :: else -> skip fi; hs++
    :: else -> break
    od;
    if
    :: G_LOST && mr[1 - prim] != mr[prim] -> mlost = 1
    :: else -> skip
    fi;
    printf("MSC: t=%d FAILOVER (lossy=%d)\n", now, dirty);
    prim = 1 - prim;
    wipe_node(1 - prim);
    dirty = 1;
    reconnect_all();
    INV
  }
}

/* Empty restart: every key is gone (no persistence); TIME goes on, or steps back. */
inline empty_restart(step) {
  d_step {
    QUIET && FAULTS_OPEN && nRS < MAXRS && (!step || nTS < MAXTS) ->
    nRS++;
    if
    :: step -> nTS++; toff = TSTEP
    :: else -> skip
    fi;
    hs = 1;
    do
    :: hs <= jl[prim] -> if :: G_LOST -> lostc = lostc | (1 << hs) :: else -> skip fi; hs++
    :: else -> break
    od;
    if
    :: G_LOST && mr[prim] != M_NONE -> mlost = 1
    :: else -> skip
    fi;
#if P_TOKENS
    premax = maxmint; rsdone = 1;
#endif
    printf("MSC: t=%d EMPTY RESTART\n", now);
    wipe_node(0); wipe_node(1);
    dirty = 0;
    reconnect_all();
    INV
  }
}

/* A command's reply is lost (socket timeout): the command stays queued on the
 * dead connection (it may still run, before or after the re-send) and the
 * client either re-sends it on a new connection or reports an error. */
inline lose_reply(ch, own) {
  if
  :: d_step {
       FAULTS_OPEN && nLR < MAXLR && cs[ch] == S_Q ->
       ok[nLR] = ck[ch]; oa[nLR] = ca[ch]; ot[nLR] = ct[ch]; ox[nLR] = cx[ch]; oown[nLR] = own;
       nLR++; stuck[ch] = 0;
       ack[ch] = 1;                                   /* re-sent on a new connection */
       printf("MSC: t=%d reply lost, re-sent (ch %d)\n", now, ch); INV
     }
  :: d_step {
       FAULTS_OPEN && nLR < MAXLR && cs[ch] == S_Q ->
       ok[nLR] = ck[ch]; oa[nLR] = ca[ch]; ot[nLR] = ct[ch]; ox[nLR] = cx[ch]; oown[nLR] = own;
       nLR++; stuck[ch] = 0;
       ack[ch] = 1;
       cs[ch] = S_ERR; rr[ch] = R_ERR; ra[ch] = 0; rt[ch] = 0;
       printf("MSC: t=%d reply lost, error (ch %d)\n", now, ch); INV
     }
  fi
}

inline redis_actions() {
  if
  :: exec_live(0, 0)
  :: exec_live(1, 0)
  :: exec_live(2, 0)
  :: exec_live(3, 1)
  :: exec_live(4, 1)
  :: exec_live(5, 1)
  :: exec_live(6, 2)
  :: exec_orphan(0)
#if NORPH > 1
  :: exec_orphan(1)
#endif
  :: replicate()
  fi
}

/* a command is delayed in the network (it runs whenever, see exec_live) */
inline stick(ch) {
  d_step { FAULTS_OPEN && nST < MAXST && cs[ch] == S_Q && !stuck[ch] -> nST++; stuck[ch] = 1; INV }
}

inline redis_faults() {
  if
  :: stick(0)
  :: stick(1)
  :: stick(2)
  :: stick(3)
  :: stick(4)
  :: stick(5)
  :: stick(6)
  :: failover(0)
  :: failover(1)
  :: empty_restart(0)
  :: empty_restart(1)
  :: lose_reply(0, 0)
  :: lose_reply(1, 0)
  :: lose_reply(2, 0)
  :: lose_reply(3, 1)
  :: lose_reply(4, 1)
  :: lose_reply(5, 1)
  :: lose_reply(6, 2)
  fi
}
