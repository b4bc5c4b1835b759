//! A customer in a real headless browser (Debian's chromium driven through chromedriver over
//! WebDriver): the demo shop's Subscribe button, Moment's checkout at the simulator, the card
//! form, the return page, then the Charge button, with Postgres checked at each step.
//!
//! Needs `chromium` and `chromium-driver` (`.ci/run` installs them). Where they are missing
//! the test is skipped with a line saying how to run it, unless `MM_REQUIRE_BROWSER=1` (set
//! by `.ci/run`) makes it required: then their absence fails it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

use crate::support::process::free_port;
use crate::support::stack::start_stack;

/// chromedriver, killed when dropped.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find_program(name: &str, fallback: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .chain([PathBuf::from(fallback)])
        .find(|p| p.is_file())
}

/// Starts chromedriver and opens a headless session.
async fn browser() -> Option<(Driver, Client)> {
    const INSTALL: &str = "install Debian's chromium and chromium-driver \
        (apt-get install chromium chromium-driver, as .ci/run does)";
    let required = std::env::var("MM_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    let chromedriver = find_program("chromedriver", "/usr/bin/chromedriver");
    let chromium = find_program("chromium", "/usr/bin/chromium");
    let (Some(chromedriver), Some(chromium)) = (chromedriver, chromium) else {
        if required {
            panic!("chromium or chromedriver not found and MM_REQUIRE_BROWSER=1: {INSTALL}");
        }
        eprintln!(
            "browser test skipped: chromium or chromedriver not found; to run it, {INSTALL}, \
             then cargo test (MM_REQUIRE_BROWSER=1 makes it required)"
        );
        return None;
    };
    let port = free_port();
    let driver = Driver(
        Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
    );
    let mut options = json!({
        "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1000,900"]
    });
    options["binary"] = json!(chromium);
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), options);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match ClientBuilder::new(HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(client) => return Some((driver, client)),
            Err(e) if Instant::now() > deadline => panic!("no WebDriver session: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The text of element `#id` once it reads `want`; the page may reload meanwhile.
async fn wait_for_text(client: &Client, id: &str, want: &str) {
    // The shop learns of changes from the service's webhooks, sent by its worker.
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(el) = client.find(Locator::Id(id)).await
            && let Ok(text) = el.text().await
        {
            if text == want {
                return;
            }
            last = text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let url = client
        .current_url()
        .await
        .map(|u| u.to_string())
        .unwrap_or_default();
    panic!("#{id} never read {want:?} (last {last:?}) at {url}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_subscribes_in_a_real_browser_and_is_charged() {
    let Some((_driver, client)) = browser().await else {
        return;
    };
    let stack = start_stack(|_| {}).await;
    let wait = Duration::from_secs(20);

    // The shop: Subscribe (its server side calls POST /mandates with the API key).
    client.goto(&stack.dev.demo_url).await.unwrap();
    client
        .find(Locator::Id("subscribe"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // Moment's checkout, at the simulator.
    let card = client
        .wait()
        .at_most(wait)
        .for_element(Locator::Id("card-number"))
        .await
        .unwrap();
    let url = client.current_url().await.unwrap();
    assert!(
        url.as_str()
            .starts_with(&format!("{}/checkout/", stack.dev.sim_url)),
        "{url}"
    );
    card.send_keys("4242 4242 4242 4242").await.unwrap();
    client
        .find(Locator::Id("expiry"))
        .await
        .unwrap()
        .send_keys("12/34")
        .await
        .unwrap();
    client
        .find(Locator::Id("cvc"))
        .await
        .unwrap()
        .send_keys("123")
        .await
        .unwrap();
    client
        .find(Locator::Id("pay"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // Back at the shop, through the service's return route.
    wait_for_text(&client, "mandate-status", "active").await;
    let mandate_id = client
        .find(Locator::Id("mandate-id"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (status, pm): (String, Option<String>) =
        sqlx::query_as("select status, payment_method_id from mandate where id = $1::uuid")
            .bind(&mandate_id)
            .fetch_one(&stack.db)
            .await
            .unwrap();
    assert_eq!(status, "active");
    assert!(pm.unwrap().starts_with("pmt_"));

    // Charge it: the page refreshes until Moment settles the charge.
    client
        .find(Locator::Id("charge"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_text(&client, "charge-status", "succeeded").await;
    let charge_id = client
        .find(Locator::Id("charge-id"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (status, mandate): (String, String) =
        sqlx::query_as("select status, mandate_id::text from charge where id = $1::uuid")
            .bind(&charge_id)
            .fetch_one(&stack.db)
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), mandate.as_str()),
        ("succeeded", mandate_id.as_str())
    );

    // Bill the mandate monthly from tomorrow, then fast-forward two months: two charges.
    client
        .find(Locator::Id("back"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client
        .wait()
        .at_most(wait)
        .for_element(Locator::Id("bill"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_text(&client, "subscription-status", "active").await;
    for months in 1..=2 {
        client
            .wait()
            .at_most(wait)
            .for_element(Locator::Id("next-month"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_for_text(&client, "charge-count", &months.to_string()).await;
    }
    let statuses: Vec<String> = sqlx::query_scalar(
        "select status from charge where subscription_id is not null order by period",
    )
    .fetch_all(&stack.db)
    .await
    .unwrap();
    assert_eq!(statuses, ["succeeded", "succeeded"]);
    let page = client.source().await.unwrap();
    assert_eq!(page.matches("class=\"charge\"").count(), 2, "{page}");
    client.close().await.unwrap();
}
