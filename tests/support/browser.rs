//! A real headless Chromium, driven by Debian's chromedriver over W3C WebDriver, trusting only
//! the test server's CA (an NSS database in its own home directory). Quit when dropped.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::Sandbox;

/// The key WebDriver names an element by in its answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    agent: ureq::Agent,
    session: String,
}

impl Browser {
    /// Starts chromedriver and a Chromium session whose only extra trust anchor is `ca`.
    pub fn start(sb: &Sandbox, ca: &Path) -> Browser {
        let home = sb.path("browser-home");
        let nss = home.join(".pki/nssdb");
        std::fs::create_dir_all(&nss).unwrap();
        let db = format!("sql:{}", nss.display());
        let certutil = |args: &[&str]| {
            let out = Command::new("certutil").args(args).output().unwrap();
            assert!(out.status.success(), "certutil {args:?}: {out:?}");
        };
        certutil(&["-N", "-d", &db, "--empty-password"]);
        certutil(&[
            "-A",
            "-d",
            &db,
            "-n",
            "lifeline test CA",
            "-t",
            "C,,",
            "-i",
            ca.to_str().unwrap(),
        ]);
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .env("HOME", &home)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (scripts/install-deps.sh installs chromium-driver)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .build()
            .new_agent();
        let mut browser = Browser {
            driver,
            agent,
            session: String::new(),
        };
        let profile = home.join("profile");
        let answer = browser.call(
            "POST",
            &format!("http://127.0.0.1:{port}/session"),
            Some(json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "acceptInsecureCerts": false,
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1200,900",
                             "--no-first-run", "--disable-extensions",
                             format!("--user-data-dir={}", profile.display())],
                },
            }}})),
        );
        browser.session = format!(
            "http://127.0.0.1:{port}/session/{}",
            answer["sessionId"].as_str().expect("a WebDriver session")
        );
        browser
    }

    fn call(&self, method: &str, url: &str, body: Option<Value>) -> Value {
        self.try_call(method, url, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {url}: {e}"))
    }

    /// A WebDriver call; `Err` holds the error WebDriver answered.
    fn try_call(&self, method: &str, url: &str, body: Option<Value>) -> Result<Value, Value> {
        let response = match method {
            "GET" => self.agent.get(url).call(),
            "DELETE" => self.agent.delete(url).call(),
            _ => self
                .agent
                .post(url)
                .header("content-type", "application/json")
                .send(body.unwrap_or(json!({})).to_string()),
        };
        let mut response = response.unwrap_or_else(|e| panic!("WebDriver {url}: {e}"));
        let text = response.body_mut().read_to_string().unwrap();
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{text}"));
        match v["value"]["error"].is_null() {
            true => Ok(v["value"].clone()),
            false => Err(v["value"].clone()),
        }
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("{}{path}", self.session), body)
    }

    /// Signs in to the console of the server at `url` with the credential in `credential`.
    pub fn sign_in(&self, url: &str, credential: &Path) {
        self.goto(&format!("{url}/ui/sign-in"));
        let credential = std::fs::read_to_string(credential).unwrap();
        self.type_into("#credential", credential.trim());
        self.submit("#sign-in");
        assert!(
            self.url().ends_with("/ui/"),
            "not signed in: {}",
            self.url()
        );
    }

    pub fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })));
    }

    pub fn url(&self) -> String {
        self.session_call("GET", "/url", None)
            .as_str()
            .unwrap()
            .to_string()
    }

    fn element(&self, css: &str) -> String {
        let found = self.session_call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("{css}: {found}"))
            .to_string()
    }

    /// How many elements match `css`.
    pub fn count(&self, css: &str) -> usize {
        self.session_call(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .as_array()
        .unwrap()
        .len()
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.session_call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    pub fn click(&self, css: &str) {
        let id = self.element(css);
        self.session_call("POST", &format!("/element/{id}/click"), None);
    }

    /// Clicks what submits a form or follows a link, and waits for the next page to load.
    pub fn submit(&self, css: &str) {
        let old = self.element("html");
        self.click(css);
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("{}/element/{old}/name", self.session);
        while self.try_call("GET", &url, None).is_ok() {
            assert!(
                Instant::now() < deadline,
                "{css} did not lead to another page"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.wait_loaded();
    }

    /// Waits until the page the browser shows has a URL `is_it` accepts, and has loaded (after
    /// a navigation the page started itself).
    pub fn wait_for_url(&self, what: &str, is_it: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_it(&self.url()) {
            assert!(Instant::now() < deadline, "{what}: still at {}", self.url());
            std::thread::sleep(Duration::from_millis(100));
        }
        self.wait_loaded();
    }

    /// Waits until the page (after a navigation the page started itself) has loaded.
    pub fn wait_loaded(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = self.try_call(
                "POST",
                &format!("{}/execute/sync", self.session),
                Some(json!({"script": "return document.readyState", "args": []})),
            );
            if ready.is_ok_and(|r| r == "complete") {
                return;
            }
            assert!(Instant::now() < deadline, "the page did not load");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The rendered text of the first element matching `css`.
    pub fn text(&self, css: &str) -> String {
        let id = self.element(css);
        self.session_call("GET", &format!("/element/{id}/text"), None)
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Runs `script` in the page (WebDriver's, not the page's: the CSP does not apply).
    pub fn script(&self, script: &str, args: Value) -> Value {
        self.session_call(
            "POST",
            "/execute/async",
            Some(json!({ "script": script, "args": args })),
        )
    }

    pub fn cookie(&self, name: &str) -> Value {
        self.session_call("GET", &format!("/cookie/{name}"), None)
    }

    pub fn add_cookie(&self, cookie: Value) {
        self.session_call("POST", "/cookie", Some(json!({ "cookie": cookie })));
    }

    /// Saves a PNG of the window as `name`.png in `target/screenshots/` (and in the directory
    /// `LIFELINE_SCREENSHOTS` names, for `make screenshots`).
    pub fn screenshot(&self, name: &str) {
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD
            .decode(
                self.session_call("GET", "/screenshot", None)
                    .as_str()
                    .unwrap(),
            )
            .unwrap();
        let mut dirs = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots")];
        if let Some(dir) = std::env::var_os("LIFELINE_SCREENSHOTS") {
            dirs.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir));
        }
        for dir in dirs {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("{name}.png")), &png).unwrap();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.agent.delete(&self.session).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
