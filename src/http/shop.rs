//! Shops and their customer-service agents. An agent the owner adds is only invited until
//! they accept; only accepted agents get customers.

use crate::cluster::Invalidation;
use serde_json::json;

use super::envelope::{ApiError, ApiResult};
use super::params::Params;
use super::room::user_list;
use crate::app::App;
use crate::read_through::Fact;

pub async fn create(app: &App, params: Params) -> ApiResult {
    let claims = params.user(app)?;
    let name = params.require("name")?.trim().to_string();
    if name.is_empty() || name.chars().count() > 64 {
        return Err(ApiError::bad_request("`name` must be 1-64 characters"));
    }
    let owner = claims.uid;
    let shop_id = app.store.create_shop(name, owner).await?;
    app.directory.add_shop(shop_id, owner);
    app.invalidate(Invalidation::Shop { shop_id }).await;
    Ok(json!({"shop_id": shop_id}))
}

/// The shop and agent named in the request, after checking that the caller owns the shop.
async fn owned_shop_and_agent(app: &App, params: &Params) -> Result<(u64, u64), ApiError> {
    let claims = params.user(app)?;
    let shop_id = params.require_number("shop_id")?;
    let uid = params.require_number("uid")?;
    // Cluster mode: the shop or the user may come from another node a moment ago.
    app.read_through.confirm_all(&[Fact::Shop(shop_id), Fact::user(uid)]).await;
    let owner = app.directory.shop_owner(shop_id).ok_or_else(|| ApiError::not_found("no such shop"))?;
    if owner != claims.uid {
        return Err(ApiError::forbidden("only the shop's owner may change its agents"));
    }
    if !app.directory.user_exists(uid) {
        return Err(ApiError::not_found(format!("no such user: {uid}")));
    }
    Ok((shop_id, uid))
}

/// The owner adds `uid`: invited until they accept (`/shop/agent/accept`), except the owner
/// themselves and an agent who already accepted.
pub async fn add_agent(app: &App, params: Params) -> ApiResult {
    let (shop_id, uid) = owned_shop_and_agent(app, &params).await?;
    let owner = app.directory.shop_owner(shop_id) == Some(uid);
    let accepted = app.store.add_agent(shop_id, uid, owner).await?;
    if accepted {
        app.directory.add_agent(shop_id, uid);
    } else {
        app.directory.invite_agent(shop_id, uid);
    }
    app.invalidate(Invalidation::Shop { shop_id }).await;
    Ok(json!({"shop_id": shop_id, "uid": uid, "accepted": accepted}))
}

/// `POST /shop/agent/accept`: the invited caller becomes an agent of the shop; 404 without an
/// invitation. Accepting again is not an error.
pub async fn accept_agent(app: &App, params: Params) -> ApiResult {
    let claims = params.user(app)?;
    let shop_id = params.require_number("shop_id")?;
    let uid = claims.uid;
    if app.directory.is_agent(shop_id, uid) {
        return Ok(json!({"shop_id": shop_id, "uid": uid, "accepted": true}));
    }
    // Cluster mode: the invitation (or the acceptance) may come from another node.
    if !app.read_through.confirm(&Fact::Invited(shop_id, uid)).await {
        return Err(ApiError::not_found(format!("no invitation to be an agent of shop {shop_id}")));
    }
    if app.directory.is_agent(shop_id, uid) {
        return Ok(json!({"shop_id": shop_id, "uid": uid, "accepted": true}));
    }
    // The owner may have removed them meanwhile.
    if !app.store.accept_agent(shop_id, uid).await? {
        return Err(ApiError::not_found(format!("no invitation to be an agent of shop {shop_id}")));
    }
    app.directory.accept_agent(shop_id, uid);
    app.invalidate(Invalidation::Shop { shop_id }).await;
    Ok(json!({"shop_id": shop_id, "uid": uid, "accepted": true}))
}

pub async fn remove_agent(app: &App, params: Params) -> ApiResult {
    let (shop_id, uid) = owned_shop_and_agent(app, &params).await?;
    app.directory.remove_agent(shop_id, uid);
    app.store.remove_agent(shop_id, uid).await?;
    app.directory.forget_handler(shop_id, uid);
    app.invalidate(Invalidation::Shop { shop_id }).await;
    // Every agent of the shop may now have those conversations unread.
    app.directory.unread.note_everyone();
    Ok(json!({"shop_id": shop_id, "uid": uid}))
}

/// The shop's accepted agents, for its owner and those agents; the owner also gets the uids
/// still `invited` (no names: they have not agreed to anything yet).
pub async fn agents(app: &App, params: Params) -> ApiResult {
    let claims = params.user(app)?;
    let shop_id = params.require_number("shop_id")?;
    app.read_through.confirm(&Fact::Shop(shop_id)).await;
    let owner = app.directory.shop_owner(shop_id).ok_or_else(|| ApiError::not_found("no such shop"))?;
    let agents = app.directory.shop_agents(shop_id).unwrap_or_default();
    if owner != claims.uid && !agents.contains(&claims.uid) {
        return Err(ApiError::forbidden("only the shop's owner and agents may list its agents"));
    }
    let mut reply = json!({"shop_id": shop_id, "agents": user_list(app, &agents)});
    if owner == claims.uid {
        let mut invited = app.directory.shop_invited(shop_id);
        invited.sort_unstable();
        reply["invited"] = json!(invited);
    }
    Ok(reply)
}
