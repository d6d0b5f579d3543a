//! Which agent of a shop gets a customer's message (contract 3.4): the conversation's handler
//! if online, else a random online agent (who then handles it), else nobody now.

/// Where a customer's message goes.
#[derive(Debug, PartialEq, Eq)]
pub struct Choice {
    /// The agent sent the message now, who becomes (or stays) the handler.
    pub agent: Option<u64>,
    /// Nobody online and nobody handles the conversation: every agent syncs it later.
    pub all_agents: bool,
}

/// Chooses among `agents`. `handler` is the conversation's last handler (ignored if no longer
/// an agent); `pick(n)` returns an index below `n` (random in the daemon).
pub fn choose(
    handler: Option<u64>,
    agents: &[u64],
    is_online: impl Fn(u64) -> bool,
    pick: impl FnOnce(usize) -> usize,
) -> Choice {
    let handler = handler.filter(|h| agents.contains(h));
    let agent = handler.filter(|&h| is_online(h)).or_else(|| {
        let online: Vec<u64> = agents.iter().copied().filter(|&a| is_online(a)).collect();
        (!online.is_empty()).then(|| online[pick(online.len()).min(online.len() - 1)])
    });
    Choice { agent, all_agents: agent.is_none() && handler.is_none() }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENTS: &[u64] = &[10, 11, 12];

    fn choose_with(handler: Option<u64>, online: &[u64], index: usize) -> Choice {
        choose(handler, AGENTS, |uid| online.contains(&uid), |n| index % n)
    }

    #[test]
    fn an_online_handler_keeps_the_conversation() {
        assert_eq!(choose_with(Some(12), &[10, 11, 12], 0), Choice { agent: Some(12), all_agents: false });
    }

    #[test]
    fn else_a_random_online_agent_gets_it() {
        assert_eq!(choose_with(Some(12), &[10, 11], 1), Choice { agent: Some(11), all_agents: false });
        assert_eq!(choose_with(None, &[11], 5), Choice { agent: Some(11), all_agents: false });
        // Someone who is no longer an agent is no handler.
        assert_eq!(choose_with(Some(99), &[99, 10], 0), Choice { agent: Some(10), all_agents: false });
    }

    #[test]
    fn else_nobody_now_and_the_handler_or_every_agent_syncs_it() {
        assert_eq!(choose_with(Some(12), &[], 0), Choice { agent: None, all_agents: false });
        assert_eq!(choose_with(None, &[], 0), Choice { agent: None, all_agents: true });
        assert_eq!(choose_with(Some(99), &[99], 0), Choice { agent: None, all_agents: true });
    }
}
