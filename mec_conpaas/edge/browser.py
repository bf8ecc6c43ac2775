"""Headless Debian chromium for the dashboard's test and benchmark.

selenium drives the system's ``chromium`` through ``chromium-driver``
(tools/install-deps.sh installs both): nothing is downloaded.  The browser
can reach the manager and nothing else: every other address goes to a
proxy that does not exist, so a page that needed an asset from the
internet would fail to load it.
"""
import shutil
import urllib.parse

CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")


def available():
    return bool(CHROMIUM and DRIVER)


def start(manager_url, width=1400, height=1000):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--window-size=%d,%d" % (width, height),
                "--proxy-server=http://127.0.0.1:9",
                "--proxy-bypass-list=" + urllib.parse.urlsplit(manager_url).hostname):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(DRIVER), options=opts)
