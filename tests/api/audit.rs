//! The audit trail: registrations made and revoked, pings accepted and refused (with the reason,
//! whoever sent them), jobs cancelled and deleted, readable with the admin credential only and
//! never holding a full job id.
use serde_json::Value;

use super::helpers::{ping, spawn_app};

#[tokio::test]
async fn the_audit_trail_records_who_did_what_and_every_refused_ping() {
    let app = spawn_app().await;
    app.provider.add_file("p.ndjson", "Patient", super::helpers::patients(2));
    // Refused before authentication, and after it.
    let res = app
        .post_import_raw(
            None,
            "application/fhir+json",
            ping(&app.provider.manifest_url(), "static").to_string(),
        )
        .await;
    assert_eq!(res.status(), 401);
    let off = app.post_import(&ping("https://elsewhere.example/fhir/$export", "dynamic")).await;
    assert_eq!(off.status(), 400);
    let id = app.start_import(&app.provider.manifest_url(), "static").await;
    app.completed(&id).await;
    assert_eq!(app.delete_job(&id).await.status(), 202);
    let res = app
        .http
        .delete(format!("{}/auth/registrations/{}", app.base, app.client_id))
        .bearer_auth(super::helpers::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let trail = app.admin_get("/admin/audit").await;
    let events = trail["events"].as_array().unwrap();
    let find = |action: &str| -> Vec<&Value> { events.iter().filter(|e| e["action"] == action).collect() };
    let created = find("registration created");
    assert!(
        created
            .iter()
            .any(|e| e["subject"] == app.client_id.as_str() && e["actor"] == "admin from 127.0.0.1"),
        "{trail}"
    );
    let refused = find("ping refused");
    assert_eq!(refused.len(), 2, "{trail}");
    assert!(refused.iter().any(|e| e["actor"] == "unauthenticated caller from 127.0.0.1"), "{trail}");
    let by_provider = refused
        .iter()
        .find(|e| e["actor"] == format!("provider {} from 127.0.0.1", app.client_id))
        .expect("the authenticated refusal");
    assert!(
        by_provider["detail"].as_str().unwrap().contains("not under the registered provider's base URL"),
        "{trail}"
    );
    let prefix = format!("{}…", &id[..8]);
    assert_eq!(find("ping accepted")[0]["subject"], prefix.as_str());
    assert_eq!(find("job deleted")[0]["subject"], prefix.as_str());
    assert_eq!(find("job deleted")[0]["actor"], "job link holder from 127.0.0.1");
    assert_eq!(find("registration revoked")[0]["subject"], app.client_id.as_str());
    assert!(events[0]["at"].as_str().unwrap().ends_with('Z'), "newest first, with times: {trail}");
    assert!(!trail.to_string().contains(&id), "no full job id in the trail");

    let anonymous = app.http.get(format!("{}/admin/audit", app.base)).send().await.unwrap();
    assert_eq!(anonymous.status(), 401, "the trail needs the admin credential");
}
