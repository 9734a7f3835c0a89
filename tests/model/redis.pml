/* redis.pml -- the Redis deployment: a primary and one replica, the Lua
 * scripts (each one d_step: scripts are atomic in Redis), asynchronous
 * replication, WAIT, and the Redis faults (failover, empty restart, TIME
 * step back). Included by lightsched.pml; see its header for what is modelled
 * and why.
 */

/* ---- helpers used inside scripts (hidden: not part of the state) ---- */

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
  :: hfence -> assert(lk_aid[prim] == ha && lk_tok[prim] == ht) /* P_fence */
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
  :: else -> assert(htok > maxacc) /* P_tokens: mint order */
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
  :: hown < NR && el[hown] == E_LEAD && taid[hown] == ha && ttok[hown] == ht -> pend[hx] = hown + 1
  :: else -> acc[hx] = 1 /* its term is already over: claimed-then-interrupted */
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
        hres = R_OK; hrt = lk_tok[prim]
     :: lk_aid[prim] != 0 && !(FIX_ACQ_SELF && lk_aid[prim] == ha) ->
        hres = R_HELD; hra = lk_aid[prim]; hrt = lk_tok[prim]
     :: lk_aid[prim] == 0 ->
        htok = tk[prim] + 1;                           /* max(GET token + 1, TIME) */
        if
        :: !NO_TIMEFLOOR && RTIME > htok -> htok = RTIME
        :: else -> skip
        fi;
        assert(htok < 31);
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
        WAKE()
     :: else -> hres = R_NO
     fi
  :: hk == K_CLM ->                                   /* CLAIM_SLOT_LUA */
     fence_check();
     if
     :: !hfence -> hres = R_FENCED
     :: hfence && FIX_FUTURE && STIME(hx) > RTIME + FB -> hres = R_FUTURE
     :: hfence && !(FIX_FUTURE && STIME(hx) > RTIME + FB) ->
        if
        :: !NO_MARK && jl[prim] >= hx && FIX_CLAIM_IDEM && jl[prim] == hx && jfa[prim] == ha && jft[prim] == ht ->
           WRITE(); hres = R_OK                        /* fixed: our own claim again: re-write, ok */
        :: !NO_MARK && jl[prim] >= hx && !(FIX_CLAIM_IDEM && jl[prim] == hx && jfa[prim] == ha && jft[prim] == ht) ->
           hres = R_CLAIMED
        :: NO_MARK || jl[prim] < hx ->
           if
           :: !NO_MARK -> jl[prim] = hx
           :: else -> skip
           fi;
           if
           :: FIX_CLAIM_IDEM -> jfa[prim] = ha; jft[prim] = ht
           :: else -> skip
           fi;
           WRITE(); hres = R_OK;
           claim_ghost()
        fi
     fi
  :: hk == K_FW ->                                    /* FENCED_SET_LUA and every other fenced write */
     fence_check();
     if
     :: hfence -> WRITE(); hres = R_OK
     :: else -> hres = R_FENCED
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
  :: else -> assert(false)
  fi
}

/* Redis executes the live copy of the request queued on channel ch. When
 * WAIT follows the command (same connection, one pipeline), its outcome is
 * settled here: either the replica applies everything up to this command
 * now and WAIT returns 1 (first alternative), or WAIT times out
 * (second; at most once per replica per tick). A WAIT after a command
 * that wrote nothing counts the connection's earlier writes only: on a
 * fresh connection it returns at once (ack[ch] = 1). */
inline exec_begin(ch, own) {
  hk = ck[ch]; ha = ca[ch]; ht = ct[ch]; hx = cx[ch]; hch = ch; hown = own; hlive = 1;
  run_script();
  rr[ch] = hres; ra[ch] = hra; rt[ch] = hrt; cs[ch] = S_RDY; rw[ch] = 1
}
inline exec_live(ch, own) {
  if
  :: d_step {
       cs[ch] == S_Q && (!HASWAIT(ck[ch]) || !lag) ->
       stuck[ch] = 0;
       exec_begin(ch, own);
       if
       :: HASWAIT(hk) && !ack[ch] -> copy_node(1 - prim, prim); dirty = 0;
          for (hi : 0 .. NCHT - 1) { ack[hi] = 1 }
       :: else -> skip
       fi;
       INV
     }
  :: d_step {
       cs[ch] == S_Q && HASWAIT(ck[ch]) && WAIT_MAY_FAIL(own) ->
       stuck[ch] = 0;
       exec_begin(ch, own);
       if
       :: !ack[ch] -> rw[ch] = 0; WTO(own)          /* WAIT returned 0 */
       :: else -> skip                              /* nothing unacknowledged on this connection: 1 at once */
       fi;
       INV
     }
  fi
}

/* Redis executes a command left queued on a connection the client gave up on. */
inline exec_orphan(o) {
  d_step {
    ok[o] != 0 ->
    hk = ok[o]; ha = oa[o]; ht = ot[o]; hx = ox[o]; hown = oown[o]; hlive = 0; hch = 0;
    run_script();
    ok[o] = 0; oa[o] = 0; ot[o] = 0; ox[o] = 0; oown[o] = 0;
    INV
  }
}

inline copy_node(d, s) {
  lk_aid[d] = lk_aid[s]; lk_tok[d] = lk_tok[s]; lk_exp[d] = lk_exp[s]; tk[d] = tk[s];
  jl[d] = jl[s]; jfa[d] = jfa[s]; jft[d] = jft[s];
  mr[d] = mr[s]; mra[d] = mra[s]; mrt[d] = mrt[s]
}

inline wipe_node(d) {
  lk_aid[d] = 0; lk_tok[d] = 0; lk_exp[d] = 0; tk[d] = 0;
  jl[d] = 0; jfa[d] = 0; jft[d] = 0;
  mr[d] = M_NONE; mra[d] = 0; mrt[d] = 0
}

/* Asynchronous replication: the replica applies the primary's stream. Any
 * prefix is reachable (this step may happen after any write), and WAIT only
 * asks "has everything written on my connection reached the replica". */
inline replicate() {
  d_step {
    dirty && !lag ->
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
    FAULTS_OPEN && nFO < MAXFO && (!step || nTS < MAXTS) ->
    nFO++;
    if
    :: step -> nTS++; toff = TSTEP
    :: else -> skip
    fi;
    /* ghost: slots whose claim this failover loses (P_once_history) */
    hs = jl[1 - prim] + 1;
    do
    :: hs <= jl[prim] -> lostc = lostc | (1 << hs); hs++
    :: else -> break
    od;
    if
    :: mr[1 - prim] != mr[prim] -> mlost = 1
    :: else -> skip
    fi;
    printf("MSC: FAILOVER (lossy=%d)\n", dirty);
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
    FAULTS_OPEN && nRS < MAXRS && (!step || nTS < MAXTS) ->
    nRS++;
    if
    :: step -> nTS++; toff = TSTEP
    :: else -> skip
    fi;
    hs = 1;
    do
    :: hs <= jl[prim] -> lostc = lostc | (1 << hs); hs++
    :: else -> break
    od;
    if
    :: mr[prim] != M_NONE -> mlost = 1
    :: else -> skip
    fi;
#if P_TOKENS
    premax = maxmint; rsdone = 1;
#endif
    printf("MSC: EMPTY RESTART\n");
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
       printf("MSC: reply lost, re-sent (ch %d)\n", ch)
     }
  :: d_step {
       FAULTS_OPEN && nLR < MAXLR && cs[ch] == S_Q ->
       ok[nLR] = ck[ch]; oa[nLR] = ca[ch]; ot[nLR] = ct[ch]; ox[nLR] = cx[ch]; oown[nLR] = own;
       nLR++; stuck[ch] = 0;
       ack[ch] = 1;
       cs[ch] = S_ERR; rr[ch] = R_ERR; ra[ch] = 0; rt[ch] = 0;
       printf("MSC: reply lost, error (ch %d)\n", ch)
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
  :: d_step { FAULTS_OPEN && nRL < MAXRL && !lag -> nRL++; lag = 1; printf("MSC: the Redis replica stops applying\n"); INV }
  :: d_step { lag -> lag = 0; INV }
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
