//! Who may read a conversation, asked of the live directory: `rules::reader` over its data.

use crate::directory::Directory;
use crate::rules::reader::Participants;

impl Participants for Directory {
    fn user_exists(&self, uid: u64) -> bool {
        Directory::user_exists(self, uid)
    }
    fn is_room_member(&self, chat_id: &str, uid: u64) -> Option<bool> {
        self.room_members(chat_id).map(|members| members.contains(&uid))
    }
    fn shop_owner(&self, shop_id: u64) -> Option<u64> {
        Directory::shop_owner(self, shop_id)
    }
    fn is_agent(&self, shop_id: u64, uid: u64) -> bool {
        Directory::is_agent(self, shop_id, uid)
    }
}
