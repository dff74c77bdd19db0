//! [`ScriptCall`]: an `EVALSHA` built straight into one command buffer.
//!
//! `redis::Script::prepare_invoke` collects every key and argument in a
//! vector of its own and copies them into the command when it is sent:
//! one allocation per argument, on every acquire, release and extend. A
//! [`ScriptCall`] writes them into the command as they come (a key's
//! suffix, like `:fence`, is appended in place, not formatted into a new
//! string), so a call costs the command's two buffers. When the server's
//! script cache lacks the script (after a restart or `SCRIPT FLUSH`),
//! [`Node::eval`](crate::node::Node::eval) loads it and sends the same
//! command again, as `ScriptInvocation` does.

use std::io::Write as _;

use redis::{Cmd, RedisWrite, Script, ToRedisArgs};

/// One `EVALSHA` of a script with its keys and arguments.
pub(crate) struct ScriptCall {
    pub(crate) script: &'static Script,
    pub(crate) cmd: Cmd,
}

impl ScriptCall {
    /// `EVALSHA <sha> <keys>`; then exactly `keys` calls of
    /// [`key`](Self::key) or [`key_with`](Self::key_with), then the
    /// arguments. `bytes` is a guess of their total size.
    pub(crate) fn new(script: &'static Script, keys: usize, args: usize, bytes: usize) -> Self {
        let mut cmd = Cmd::with_capacity(3 + keys + args, 64 + bytes);
        cmd.arg("EVALSHA").arg(script.get_hash()).arg(keys);
        ScriptCall { script, cmd }
    }

    /// A key, as it is.
    pub(crate) fn key(&mut self, key: &str) -> &mut Self {
        self.cmd.write_arg(key.as_bytes());
        self
    }

    /// The key `key` followed by `suffix` (a lock's fencing counter or
    /// release record), written in place.
    pub(crate) fn key_with(&mut self, key: &str, suffix: &str) -> &mut Self {
        let mut writer = self.cmd.writer_for_next_arg();
        // Writing into the command's own vector cannot fail.
        let _ = writer.write_all(key.as_bytes());
        let _ = writer.write_all(suffix.as_bytes());
        drop(writer);
        self
    }

    /// An argument.
    pub(crate) fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        self.cmd.arg(arg);
        self
    }
}

/// `<name> <key><suffix>`, the key written in place.
pub(crate) fn key_command(name: &str, key: &str, suffix: &str) -> Cmd {
    let mut cmd = Cmd::with_capacity(2, name.len() + key.len() + suffix.len());
    cmd.arg(name);
    let mut writer = cmd.writer_for_next_arg();
    let _ = writer.write_all(key.as_bytes());
    let _ = writer.write_all(suffix.as_bytes());
    drop(writer);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::fence_key;

    /// The command a call builds is the one `ScriptInvocation` would send.
    #[test]
    fn builds_the_same_command_as_a_script_invocation() {
        static SCRIPT: std::sync::LazyLock<Script> =
            std::sync::LazyLock::new(|| Script::new("return 1"));
        let key = "distlock:{ticket:42}";
        let mut call = ScriptCall::new(&SCRIPT, 2, 2, 0);
        call.key(key)
            .key_with(key, ":fence")
            .arg(&b"token"[..])
            .arg(30_000u64);
        let mut expected = redis::cmd("EVALSHA");
        expected
            .arg(SCRIPT.get_hash())
            .arg(2)
            .arg(key)
            .arg(fence_key(key))
            .arg("token")
            .arg(30_000u64);
        assert_eq!(call.cmd.get_packed_command(), expected.get_packed_command());
        assert_eq!(
            key_command("INCR", key, ":fence").get_packed_command(),
            redis::cmd("INCR").arg(fence_key(key)).get_packed_command()
        );
    }
}
