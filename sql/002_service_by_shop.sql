-- imd schema, version 2.
-- Removing an agent finds the shop's service conversations: index them by shop.
CREATE INDEX conversations_by_shop ON conversations (shop_id) WHERE shop_id IS NOT NULL;
